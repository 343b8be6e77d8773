"""What each competition lever is worth on a data set with hidden test labels; prints JSON.

For each trained run (e.g. seeds 0, 1, 2 of `submission --preset demo-rsna` on data/demo-rsna) it
tunes post-processing on the run's validation detections with the kit's own commands, applies
the tuned settings to its test detections and scores them against the hidden test labels. The
rows add one lever at a time:

  threshold       box score threshold only: tune --scales 1 --max-boxes 10 --image-thresholds 0
                  --opacity-thresholds 0, on detections predicted with --tta none
  +scale          + the box-scale grid (tune's default scales)
  +flip           + flip TTA (the run's raw tables, predicted with --tta flip)
  +boxes_gate     + the max-boxes grid and the top-box image gate (tune's defaults)
  +classifier     + the image classifier's gate (tune's default opacity grid; needs the run's
                  raw_*_images.csv)
  all_but_flip    every lever of +classifier on the --tta none tables (flip TTA left out)
  +ensemble       the runs fused (`ensemble`, one row; seeds' WBF), tuned with every lever;
  ensemble_no_flip  the same on the --tta none tables

Each row: the tuned val mAP (on the run's val_ids; optimistic: the best of ~10^6 settings on the
images it is scored on), the cross-fitted val mAP (each half of the val images scored with the
settings tuned on the other half), the test mAP, the settings tune chose.
Nothing in the runs is changed: every command works on a scratch copy of the run's tables (and,
for the TTA the run did not use, `predict` on a copy of the run folder, best.h5 linked).

Usage (in the folder holding data/ and runs/):
  python bench/levers.py --runs runs/A runs/B runs/C --data data/demo-rsna [--scratch DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit import cli  # noqa: E402

NO_SCALE = ["--scales", "1"]
NO_BOXES_GATE = ["--max-boxes", "10", "--image-thresholds", "0"]
NO_CLASSIFIER = ["--opacity-thresholds", "0"]
# name -> (raw tables: "none" or "flip", tune flags)
ROWS = {
    "threshold": ("none", NO_SCALE + NO_BOXES_GATE + NO_CLASSIFIER),
    "+scale": ("none", NO_BOXES_GATE + NO_CLASSIFIER),
    "+flip": ("flip", NO_BOXES_GATE + NO_CLASSIFIER),
    "+boxes_gate": ("flip", NO_CLASSIFIER),
    "+classifier": ("flip", []),
    "all_but_flip": ("none", []),
}
TABLES = ("raw_val.csv", "raw_test.csv", "raw_val_images.csv", "raw_test_images.csv")
RUN_FILES = ("config.json", "val_ids.csv", "train_ids.csv", "train_state.json")


def kit(*argv: str) -> str:
    """``python -m kit ARGV`` in-process; its stdout (a failure raises with it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"python -m kit {' '.join(map(str, argv))} exited {code}:\n"
                         f"{out.getvalue()[-3000:]}")
    return out.getvalue()


def _copy(src: Path, dest: Path, names: tuple[str, ...]) -> None:
    """Copy those of ``names`` that exist in ``src`` into ``dest`` (created)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def scratch_run(run: Path, dest: Path, tables_from: Path) -> Path:
    """A run folder at ``dest`` with ``run``'s config and ids and ``tables_from``'s raw tables."""
    _copy(run, dest, RUN_FILES)
    _copy(tables_from, dest, TABLES)
    return dest


def tables(run: Path, tta: str, scratch: Path) -> Path:
    """A folder with ``run``'s raw tables predicted with ``tta``: the run itself when its config
    used that TTA, else ``predict --tta TTA`` on a copy of the run (best.h5 linked)."""
    if json.loads((run / "config.json").read_text()).get("tta") == tta:
        return run
    dest = scratch / f"tta-{tta}"
    _copy(run, dest, RUN_FILES)
    (dest / "best.h5").symlink_to((run / "best.h5").resolve())
    kit("predict", "--run", dest, "--tta", tta, "--checkpoint", dest / "best.h5")
    return dest


def crossfit(folder: Path, flags: list[str]) -> float:
    """Val mAP without the tuner's optimism: the val images split in two (alternate ids), each
    half scored with the settings `tune` chose on the other half, both halves scored together
    (900 images where the test set has 300)."""
    from kit import paths
    from kit.config import RunConfig
    from kit.data.labels import boxes_by_patient, read_labels
    from kit.runs import IMAGE_COLUMNS, image_scores_path, read_ids, read_image_scores, read_raw
    from kit.score.metric import score_dataset
    from kit.score.postprocess import PostProcess

    ids = read_ids(folder / "val_ids.csv")
    labels = Path(RunConfig.load(folder / "config.json").data_dir) / paths.TRAIN_LABELS
    boxes = boxes_by_patient(read_labels(labels))
    raw = read_raw(folder / "raw_val.csv")
    scores_file = image_scores_path(folder, "val")
    image_scores = read_image_scores(scores_file) if scores_file.is_file() else None
    halves, preds = (ids[0::2], ids[1::2]), {}
    for k, (tune_on, score_on) in enumerate((halves, halves[::-1])):
        half = folder / f"half{k}"        # tune takes a raw table of exactly its images
        half.mkdir()
        pd.DataFrame({"patientId": tune_on}).to_csv(half / "ids.csv", index=False)
        raw[raw.patientId.isin(set(tune_on))].to_csv(half / "raw_val.csv", index=False)
        if image_scores is not None:
            pd.DataFrame([(pid, image_scores[pid]) for pid in tune_on if pid in image_scores],
                         columns=IMAGE_COLUMNS).to_csv(image_scores_path(half, "val"), index=False)
        kit("tune", "--raw", half / "raw_val.csv", "--labels", labels, "--ids", half / "ids.csv",
            *flags, "--top", "1")
        kept = PostProcess.from_json(half / "postprocess.json").apply(raw, image_scores)
        preds.update((pid, kept[pid]) for pid in score_on if pid in kept)
    return score_dataset({pid: boxes[pid] for pid in ids}, preds).map


def tuned_and_scored(folder: Path, flags: list[str], data: Path) -> dict:
    """tune (with ``flags``) -> submit -> score on the hidden test labels, in ``folder``; plus the
    cross-fitted val mAP."""
    honest = crossfit(folder, flags)
    text = kit("tune", "--run", folder, *flags, "--top", "1")
    val = float(text.split("best mAP ")[1].split(":")[0])
    settings = json.loads((folder / "postprocess.json").read_text())
    sub = folder / "submission.csv"
    kit("submit", "--run", folder, "--out", sub, "--data", data, "--force")
    text = kit("score", "--submission", sub, "--data", data, "--json", "--no-leaderboard",
               "--no-positive-ok")
    test = json.loads(text[text.index("{"):])["map"]     # None: no test image has a box
    return {"val_map": round(val, 4),
            "val_crossfit": None if np.isnan(honest) else round(honest, 4),   # NaN: no box at all
            "test_map": None if test is None else round(test, 4), "settings": settings}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="trained run folders")
    p.add_argument("--data", type=Path, required=True, help="data folder with demo_test_labels.csv")
    p.add_argument("--scratch", type=Path, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="levers-"))
    rows: dict[str, dict] = {name: {} for name in [*ROWS, "+ensemble", "ensemble_no_flip"]}
    members: dict[str, list[Path]] = {"flip": [], "none": []}
    for i, run in enumerate(args.runs):
        work = scratch / f"{i}-{run.name}"       # runs of one second share a name
        raw = {tta: tables(run, tta, work) for tta in ("none", "flip")}
        for tta, folder in raw.items():
            members[tta].append(folder.resolve())
        for name, (tta, flags) in ROWS.items():
            folder = scratch_run(run, work / name.strip("+"), raw[tta])
            got = rows[name][str(run)] = tuned_and_scored(folder, flags, args.data)
            print(name, run, got["val_map"], got["test_map"], file=sys.stderr)
    if len(args.runs) > 1:
        runs_dir = scratch / "ensembles"
        for row, tta in (("+ensemble", "flip"), ("ensemble_no_flip", "none")):
            kit("ensemble", "--runs", *members[tta], "--name", f"ensemble-{tta}",
                "--runs-dir", runs_dir)
            rows[row]["ensemble"] = tuned_and_scored(runs_dir / f"ensemble-{tta}", [], args.data)
    summary = {}
    for name, per_run in rows.items():
        if per_run:
            vals = [r["val_map"] for r in per_run.values()]
            fits = [r["val_crossfit"] for r in per_run.values() if r["val_crossfit"] is not None]
            tests = [r["test_map"] for r in per_run.values() if r["test_map"] is not None]
            summary[name] = {"val_mean": round(sum(vals) / len(vals), 4),
                             "val_crossfit_mean": round(sum(fits) / len(fits), 4) if fits else None,
                             "test_mean": round(sum(tests) / len(tests), 4) if tests else None,
                             "test_min": min(tests, default=None),
                             "test_max": max(tests, default=None), "runs": per_run}
    print(json.dumps({"data": str(args.data), "runs": [str(r) for r in args.runs],
                      "rows": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
