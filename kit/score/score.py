"""``score``: competition mAP and P/R/F1 of a submission CSV or a raw detections table.

**The scored set.** A file is scored on every image of the set it stands for, never only on the
rows it happens to have (leaving out a hard image must not raise a score). The set is, in order:

1. ``--ids FILE`` (a CSV with a patientId column), when given;
2. for a file inside a run folder (one holding ``val_ids.csv``: ``runs/<run>/val_submission.csv``,
   ``runs/<run>/raw_val.csv``) scored against training labels: the run's ``val_ids.csv``
   (split ``val``);
3. else every image of the labels file. A labels file whose name holds ``test``
   (``demo_test_labels.csv``: the demo's hidden answers, the same ids as its sample submission)
   is split ``test``; a training labels file is split ``train``.

A set from ``--ids`` is split ``test`` against test labels, ``val`` for a file named
``val_ids.csv``, else ``subset``. A row for an image outside the set is refused. An image of the
set without a row counts as "no prediction" and is said on stderr (``3 of 100 images missing
from sub.csv: scored as empty``); ``--strict`` refuses such a submission instead. A raw table has
no row for an image without detections, so its missing images are expected and not reported.
A set without any image with a box has no defined mAP: a clear error, exit 2, no leaderboard
row (``--no-positive-ok``: say so and exit 0, for the whole flow's 2-image preflight).

Baselines on the same images: ``none`` (no box anywhere) and ``center`` (one fixed central box
[x=312, y=312, w=400, h=400] at confidence 1 on every image: the 1024-px frame's centre, the
size of a typical opacity box; it is fixed rather than fitted so it never sees the scored labels).

The image classifier (``raw_<split>_images.csv``: P(Lung Opacity) per image) is scored by its
ROC AUC against "the image has a box" (kit.score.metric.roc_auc).

A scored submission adds a row to the local leaderboard (kit.score.leaderboard) saying what it
was scored on (split, labels, ids, images, missing) and which run, preset, seed, config and
commit made it; raw tables and ``--literal`` scores add none.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import write_csv
from kit.score.metric import PRF_IOUS, Score, prf_table, roc_auc, score_dataset

CENTER_BOX = np.array([[312.0, 312.0, 400.0, 400.0]])
SPLITS = ("test", "val", "subset", "train")   # what a score was computed on (see module doc)


@dataclass(frozen=True)
class ScoredSet:
    """The images a file is scored on: ``ids`` (in order), ``split`` (one of SPLITS), ``source``
    (the id list's path, "" when it is every image of the labels file) and ``describe`` (words)."""

    ids: list[str]
    split: str
    source: str
    describe: str


def baseline_preds(kind: str, ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Predictions of a trivial baseline on ``ids``: ``none`` or ``center`` (see module doc)."""
    if kind == "none":
        return {}
    if kind == "center":
        return {pid: (np.ones(1), CENTER_BOX.copy()) for pid in ids}
    raise KitError(f"unknown baseline {kind!r}; choose none or center")


def is_test_labels(path: Path) -> bool:
    """A labels file of held-out test images (its name holds "test": demo_test_labels.csv)."""
    return "test" in Path(path).name.lower()


def pick_labels(ids: list[str], labels: Path | None, data: Path | None) -> tuple[Path, dict]:
    """The label file whose ids cover ``ids`` and its ground truth (patientId -> (k,4) xywh)."""
    from kit.data.labels import boxes_by_patient, read_labels
    from kit.paths import default_data_dir

    if labels is not None:
        candidates = [Path(labels)]
    else:
        folder = Path(data or default_data_dir())
        candidates = [p for p in (folder / paths.TRAIN_LABELS, folder / paths.DEMO_TEST_LABELS)
                      if p.is_file()]
        if not candidates:
            raise KitError(f"no {paths.TRAIN_LABELS} or {paths.DEMO_TEST_LABELS} in {folder}: "
                           "pass --labels or --data")
    for path in candidates:
        gt = boxes_by_patient(read_labels(path))
        missing = [pid for pid in ids if pid not in gt]
        if not missing:
            return path, gt
    raise KitError(f"{len(missing)} of the {len(ids)} scored images are not in "
                   f"{' or '.join(map(str, candidates))} (first: {missing[0]!r}): pass the labels "
                   "covering them with --labels")


def scored_set(path: Path, labels_path: Path, gt: dict, ids_path: Path | None) -> ScoredSet:
    """The set ``path`` is scored on against ``labels_path`` (rules in the module doc)."""
    from kit.runs import VAL_IDS, read_ids

    test = is_test_labels(labels_path)
    run_ids = Path(path).parent / VAL_IDS
    if ids_path is None and not test and run_ids.is_file():
        ids_path = run_ids
    if ids_path is None:
        split = "test" if test else "train"
        return ScoredSet(list(gt), split, "", f"all {len(gt)} images of {labels_path}")
    ids = read_ids(ids_path)
    outside = [pid for pid in ids if pid not in gt]
    if outside:
        raise KitError(f"{len(outside)} of its {len(ids)} ids are not in {labels_path} (first: "
                       f"{outside[0]!r}): pass the labels covering them with --labels",
                       path=ids_path, field="patientId")
    split = "test" if test else "val" if Path(ids_path).name == VAL_IDS else "subset"
    return ScoredSet(ids, split, str(ids_path), f"the {len(ids)} ids of {ids_path}")


def load_predictions(path: Path, raw: bool) -> dict:
    """patientId -> (scores (n,), boxes (n,4) xywh) of a submission or a raw table."""
    if not raw:
        from kit.score.submission import read_submission

        return read_submission(path)
    from kit.score.postprocess import raw_arrays
    from kit.runs import read_raw

    pid, scores, boxes = raw_arrays(read_raw(path))
    groups = pd.Series(np.arange(len(pid))).groupby(pid, sort=False).indices
    return {p: (scores[rows], boxes[rows]) for p, rows in groups.items()}


def check_rows(path: Path, preds: dict, scored: ScoredSet, raw: bool, strict: bool) -> int:
    """Refuse rows outside the set; the number of set images without a row (a submission's are
    said on stderr, or refused with ``strict``)."""
    members = set(scored.ids)
    strays = [pid for pid in preds if pid not in members]
    if strays:
        raise KitError(f"rows for {len(strays)} images outside the scored set, "
                       f"{scored.describe} (first: {strays[0]!r}): score against the --labels or "
                       "--ids that hold them", path=path, field="patientId")
    missing = [pid for pid in scored.ids if pid not in preds]
    if missing and not raw:
        if strict:
            raise KitError(f"{len(missing)} of {len(scored.ids)} images of the scored set "
                           f"({scored.describe}) have no row (first: {missing[0]!r}); without "
                           "--strict they score as empty", path=path)
        print(f"note: {len(missing)} of {len(scored.ids)} images missing from {path}: scored as "
              f"empty (first: {missing[0]!r}; --strict refuses)", file=sys.stderr)
    return len(missing)


def run_info(path: Path) -> dict:
    """{"run", "preset", "seed", "config", "postprocess"} of the run ``path`` belongs to (its
    folder, or runs/<stem> beside or above it); empty strings / None when it belongs to none.
    config: the first 12 hex digits of the sha256 of config.json as sorted compact JSON."""
    path = Path(path)
    for run in (path.parent, path.parent.parent / paths.RUNS_DIR.name / path.stem,
                paths.RUNS_DIR / path.stem):
        if (run / "config.json").is_file():
            config = _json(run / "config.json")
            canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
            post = run / "postprocess.json"
            text = json.dumps(_json(post), sort_keys=True) if post.is_file() else ""
            return {"run": run.name, "preset": str(config.get("name", "")),
                    "seed": config.get("seed"),
                    "config": hashlib.sha256(canonical.encode()).hexdigest()[:12],
                    "postprocess": text}
    return {"run": "", "preset": "", "seed": None, "config": "", "postprocess": ""}


def _json(path: Path) -> dict:
    """A JSON object file (a run's config.json, postprocess.json); KitError when it is not one."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KitError(f"not valid JSON ({exc})", path=path) from None
    if not isinstance(value, dict):
        raise KitError("not a JSON object", path=path)
    return value


def classifier_summary(raw_path: Path, gt: dict) -> dict:
    """{"classifier": {"auc", "images"}} for the scored images that have a p_opacity in the
    image scores beside a raw table; {} when it has none. auc None: one class only."""
    from kit.runs import image_scores_beside

    image_scores = image_scores_beside(raw_path)
    if image_scores is None:
        return {}
    scored = [pid for pid in gt if pid in image_scores]
    positive = np.array([len(gt[pid]) > 0 for pid in scored], bool)
    try:
        auc = roc_auc(positive, np.array([image_scores[pid] for pid in scored]))
    except ValueError:
        auc = None
    return {"classifier": {"auc": auc, "images": len(scored)}}


def summary(score: Score, prf: dict) -> dict:
    """The JSON form: {"map", "images", "excluded", "prf": {"0.5": {...}, ...}} (NaN -> null);
    ``run_score`` adds "missing", "split", "labels" and "ids" (the scored set's)."""
    return {"map": None if math.isnan(score.map) else score.map, "images": score.n_images,
            "excluded": score.n_excluded, "prf": {f"{t:g}": counts for t, counts in prf.items()}}


def add_score_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "the scored set (every image of it is scored, whatever rows the file has):\n"
        "  1. --ids FILE, when given;\n"
        "  2. for a file in a run folder (one with val_ids.csv) scored against training\n"
        "     labels: the run's val_ids.csv (split val);\n"
        "  3. else every image of the labels file: split test when its name holds 'test'\n"
        "     (demo_test_labels.csv), else train.\n"
        "Rows for images outside the set are refused. An image of the set without a row\n"
        "scores as empty and is said on stderr (--strict refuses). A set with no image\n"
        "with a box: error, exit 2, no leaderboard row (--no-positive-ok: exit 0).")
    p.add_argument("--submission", type=Path, required=True, help="submission CSV (or raw table)")
    p.add_argument("--raw", action="store_true",
                   help="the input is a raw detections table: every row is used, no threshold")
    p.add_argument("--ids", type=Path, default=None,
                   help="CSV with a patientId column: the images to score (default: see below)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--labels", type=Path, default=None, help="label CSV")
    group.add_argument("--data", type=Path, default=None,
                       help=f"data folder: {paths.TRAIN_LABELS} or {paths.DEMO_TEST_LABELS}, "
                            "whichever covers the images (default: data/rsna, else data/demo)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a submission that has no row for some image of the scored set")
    p.add_argument("--no-positive-ok", action="store_true",
                   help="a set without any image with a box is not an error: say so, exit 0, "
                        "no leaderboard row")
    p.add_argument("--per-image", type=Path, default=None, help="write patientId,score here")
    p.add_argument("--iou", type=float, nargs="+", default=list(PRF_IOUS),
                   help="IoUs of the precision/recall/F1 table")
    p.add_argument("--literal", action="store_true",
                   help="the page's literal wording (IoU > t, match by prediction); not a leaderboard score")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--baseline", nargs="+", choices=["none", "center"], default=[],
                   help="also score trivial baselines on the same images")
    p.add_argument("--no-leaderboard", action="store_true", help="do not append a leaderboard row")
    p.add_argument("--leaderboard", type=Path, default=paths.LEADERBOARD, help="leaderboard CSV")


def run_score(args: argparse.Namespace) -> int:
    from kit.score import leaderboard

    if args.raw and args.strict:
        raise KitError("--strict checks a submission's rows; a raw table has no row for an "
                       "image without detections: drop --strict")
    ranked = not (args.raw or args.literal or args.no_leaderboard)
    if ranked:
        leaderboard.read(args.leaderboard)        # refuses a file that is not a leaderboard
    preds = load_predictions(args.submission, args.raw)
    labels_path, boxes = pick_labels(list(preds), args.labels, args.data)
    scored = scored_set(args.submission, labels_path, boxes, args.ids)
    missing = check_rows(args.submission, preds, scored, args.raw, args.strict)
    gt = {pid: boxes[pid] for pid in scored.ids}
    if not any(len(b) for b in gt.values()):
        message = (f"{args.submission}: the scored set, {scored.describe} (split {scored.split}),"
                   " has no image with a box: its mAP is not defined (images with no box and no "
                   "prediction are excluded)")
        if not args.no_positive_ok:
            raise KitError(message + "; score against a set with positive images")
        print(json.dumps({"map": None, "images": len(gt), "note": message}) if args.json
              else f"{message}: not scored, no leaderboard row")
        return 0
    score = score_dataset(gt, preds, strict=args.literal)
    prf = prf_table(gt, preds, args.iou)
    result = summary(score, prf)
    result.update({"missing": missing, "split": scored.split, "labels": str(labels_path),
                   "ids": scored.source})
    baselines = {kind: score_dataset(gt, baseline_preds(kind, scored.ids), strict=args.literal).map
                 for kind in args.baseline}
    if baselines:
        result["baselines"] = {k: None if math.isnan(v) else v for k, v in baselines.items()}
    if args.raw:
        result.update(classifier_summary(Path(args.submission), gt))
    if args.per_image:
        write_csv(args.per_image, pd.DataFrame({"patientId": list(score.per_image),
                                                "score": list(score.per_image.values())}))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_result(args, score, prf, result, baselines, scored, labels_path)
    if ranked:
        row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "file": str(args.submission),
               "sha256": hashlib.sha256(Path(args.submission).read_bytes()).hexdigest(),
               "split": scored.split, "labels": str(labels_path), "ids": scored.source,
               "images": score.n_images, "missing": missing, "excluded": score.n_excluded,
               "map": score.map}
        info = run_info(Path(args.submission))
        row.update({k: info[k] for k in ("run", "preset", "seed", "config")})
        row["commit"] = _commit()
        for t, c in prf.items():
            row.update({f"P@{t:g}": c["precision"], f"R@{t:g}": c["recall"], f"F1@{t:g}": c["f1"]})
        row["postprocess"] = info["postprocess"]
        if leaderboard.append(row, args.leaderboard) and not args.json:
            print(f"leaderboard: added to {args.leaderboard}")
    return 0


def _commit() -> str:
    """The kit's git commit now (``<sha>-dirty`` when kit/ has changes); "" outside git."""
    from kit.kaggle.bundle import source_version

    return source_version() or ""


def _print_result(args, score: Score, prf: dict, result: dict, baselines: dict,
                  scored: ScoredSet, labels_path: Path) -> None:
    mode = " (literal wording)" if args.literal else ""
    print(f"{args.submission}: mAP@[0.40:0.75]{mode} = {score.map:.4f} on "
          f"{score.n_images - score.n_excluded} images ({score.n_excluded} excluded: no box in "
          f"labels or predictions)")
    missing = f", {result['missing']} of them without a row" if result["missing"] else ""
    labels = f"; labels {labels_path}" if scored.source else ""
    print(f"  scored on {scored.describe}{missing} (split {scored.split}{labels})")
    for kind, value in baselines.items():
        print(f"  baseline {kind:<6} mAP = {value:.4f}")
    if "classifier" in result:
        auc, n = result["classifier"]["auc"], result["classifier"]["images"]
        print(f"  image classifier ROC AUC = {'n/a' if auc is None else f'{auc:.4f}'} on "
              f"{n} images (p_opacity vs 'has a box')")
    print(f"{'IoU':>5} {'TP':>6} {'FP':>6} {'FN':>6} {'precision':>9} {'recall':>7} {'F1':>6}")
    for t, c in prf.items():
        print(f"{t:5.2f} {c['tp']:6d} {c['fp']:6d} {c['fn']:6d} {c['precision']:9.4f} "
              f"{c['recall']:7.4f} {c['f1']:6.4f}")
