"""Command ``submit``: a run's raw test detections + its postprocess.json -> a validated
submission CSV (submissions/<run>.csv), and with ``--kaggle`` sent to the competition.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import paths
from kit.errors import KitError
from kit.io import write_csv
from kit.score.submission import sample_path_of, frame_problems, submission_frame


def add_submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="latest", help="run folder, name or 'latest'")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the run folders (default: runs/)")
    p.add_argument("--out", type=Path, default=None, help="default: submissions/<run>.csv")
    p.add_argument("--data", type=Path, default=None,
                   help=f"data folder holding {paths.SAMPLE_SUBMISSION} (default: the run's "
                        "data_dir, else data/rsna if present, else data/demo)")
    p.add_argument("--force", action="store_true", help="overwrite a different existing --out")
    p.add_argument("--kaggle", action="store_true", help="also submit the file to Kaggle")
    p.add_argument("-m", "--message", default=None, help="Kaggle submission message")


def run_submit(args: argparse.Namespace) -> int:
    from kit.data.labels import read_sample_submission
    from kit.score.postprocess import PostProcess
    from kit.runs import image_scores_beside, read_raw
    from kit.runs import resolve_run

    run = resolve_run(args.run, args.runs_dir)
    raw = read_raw(run / "raw_test.csv")
    image_scores = image_scores_beside(run / "raw_test.csv")      # None: a run from before
    post = PostProcess.from_json(run / "postprocess.json")
    data_dir = None
    if (run / "config.json").is_file():
        from kit.config import RunConfig

        data_dir = RunConfig.load(run / "config.json").data_dir or None
    sample_path = sample_path_of(argparse.Namespace(sample=None, data=args.data), data_dir)
    if sample_path is None:
        raise KitError("no sample submission found: pass --data DIR (the folder holding "
                       f"{paths.SAMPLE_SUBMISSION})")
    ids = read_sample_submission(sample_path)["patientId"].tolist()
    strays = sorted(set(raw["patientId"]) - set(ids))
    if strays:
        raise KitError(f"{len(strays)} patientIds are not test images of {sample_path} (first: "
                       f"{strays[0]!r}); predict on this data set's test split", path=run / "raw_test.csv")
    frame = submission_frame(post.apply(raw, image_scores), ids)
    out = Path(args.out or paths.SUBMISSIONS_DIR / f"{run.name}.csv")
    problems = frame_problems(frame, out, ids)
    if problems:
        raise KitError(f"the generated submission is invalid: {problems[0]}")
    text = frame.to_csv(index=False, lineterminator="\n")
    if out.is_file() and out.read_text() != text and not args.force:
        raise KitError("exists and differs from this run's submission: pass --force to overwrite "
                       "or --out to write elsewhere", path=out)
    write_csv(out, frame, lineterminator="\n")
    n_boxes = sum(len(s.split()) // 5 for s in frame["PredictionString"])
    n_pos = int((frame["PredictionString"] != "").sum())
    print(f"wrote {out}: {len(frame)} images, {n_pos} with boxes, {n_boxes} boxes ({post})")
    if args.kaggle:
        from kit.kaggle.api import submit

        submit(out, args.message or f"rsna-kit {run.name}")
    return 0
