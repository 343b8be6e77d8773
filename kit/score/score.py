"""``score``: competition mAP and P/R/F1 of a submission CSV or a raw detections table.

Only the images present in the input are scored (a validation-split submission is scored on its
validation ids). A raw table has no row for an image without detections, so its images are
``--ids``, else the ``val_ids.csv`` beside a ``raw_val.csv``, else the ids that have rows.

Baselines on the same images: ``none`` (no box anywhere) and ``center`` (one fixed central box
[x=312, y=312, w=400, h=400] at confidence 1 on every image: the 1024-px frame's centre, the
size of a typical opacity box; it is fixed rather than fitted so it never sees the scored labels).

The image classifier (``raw_<split>_images.csv``: P(Lung Opacity) per image) is scored by its
ROC AUC against "the image has a box" (kit.score.metric.roc_auc).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import write_csv
from kit.score.metric import PRF_IOUS, Score, prf_table, roc_auc, score_dataset

CENTER_BOX = np.array([[312.0, 312.0, 400.0, 400.0]])


def baseline_preds(kind: str, ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Predictions of a trivial baseline on ``ids``: ``none`` or ``center`` (see module doc)."""
    if kind == "none":
        return {}
    if kind == "center":
        return {pid: (np.ones(1), CENTER_BOX.copy()) for pid in ids}
    raise KitError(f"unknown baseline {kind!r}; choose none or center")


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


def load_predictions(path: Path, raw: bool, ids_path: Path | None) -> tuple[dict, list[str]]:
    """(predictions, ids to score) of a submission or a raw table."""
    if not raw:
        from kit.score.submission import read_submission

        preds = read_submission(path)
        return preds, list(preds)
    from kit.score.postprocess import raw_arrays
    from kit.runs import read_ids, read_raw

    pid, scores, boxes = raw_arrays(read_raw(path))
    groups = pd.Series(np.arange(len(pid))).groupby(pid, sort=False).indices
    preds = {p: (scores[rows], boxes[rows]) for p, rows in groups.items()}
    beside = Path(path).parent / "val_ids.csv"
    if ids_path is None and Path(path).name == "raw_val.csv" and beside.is_file():
        ids_path = beside
    if ids_path is None:
        print(f"note: scoring the {len(preds)} images that have raw rows (images without any "
              "detection are not seen: pass --ids)")
        return preds, list(preds)
    ids = read_ids(ids_path)
    strays = sorted(set(preds) - set(ids))
    if strays:
        raise KitError(f"{len(strays)} patientIds of {path} are not in the id list (first: "
                       f"{strays[0]!r})", path=ids_path, field="patientId")
    return preds, ids


def _run_of(path: Path) -> tuple[str, str]:
    """(run name, compact postprocess JSON) when ``path`` belongs to a run, else ("", "")."""
    for run in (path.parent, paths.RUNS_DIR / path.stem):
        if (run / "config.json").is_file():
            post = run / "postprocess.json"
            text = json.dumps(json.loads(post.read_text()), sort_keys=True) if post.is_file() else ""
            return run.name, text
    return "", ""


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
    """The JSON form: {"map", "images", "excluded", "prf": {"0.5": {...}, ...}} (NaN -> null)."""
    return {"map": None if math.isnan(score.map) else score.map, "images": score.n_images,
            "excluded": score.n_excluded, "prf": {f"{t:g}": counts for t, counts in prf.items()}}


def add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--submission", type=Path, required=True, help="submission CSV (or raw table)")
    p.add_argument("--raw", action="store_true",
                   help="the input is a raw detections table: every row is used, no threshold")
    p.add_argument("--ids", type=Path, default=None,
                   help="with --raw: CSV with a patientId column, the images to score")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--labels", type=Path, default=None, help="label CSV")
    group.add_argument("--data", type=Path, default=None,
                       help=f"data folder: {paths.TRAIN_LABELS} or {paths.DEMO_TEST_LABELS}, "
                            "whichever covers the images (default: data/rsna, else data/demo)")
    p.add_argument("--per-image", type=Path, default=None, help="write patientId,score here")
    p.add_argument("--iou", type=float, nargs="+", default=list(PRF_IOUS),
                   help="IoUs of the precision/recall/F1 table")
    p.add_argument("--strict", action="store_true",
                   help="the page's literal wording (IoU > t, match by prediction); not a leaderboard score")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--baseline", nargs="+", choices=["none", "center"], default=[],
                   help="also score trivial baselines on the same images")
    p.add_argument("--no-leaderboard", action="store_true", help="do not append a leaderboard row")
    p.add_argument("--leaderboard", type=Path, default=paths.LEADERBOARD, help="leaderboard CSV")


def run_score(args: argparse.Namespace) -> int:
    preds, ids = load_predictions(args.submission, args.raw, args.ids)
    labels_path, boxes = pick_labels(ids, args.labels, args.data)
    gt = {pid: boxes[pid] for pid in ids}
    score = score_dataset(gt, preds, strict=args.strict)
    prf = prf_table(gt, preds, args.iou)
    result = summary(score, prf)
    baselines = {kind: score_dataset(gt, baseline_preds(kind, ids), strict=args.strict).map
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
        mode = " (strict wording)" if args.strict else ""
        print(f"{args.submission}: mAP@[0.40:0.75]{mode} = {score.map:.4f} on "
              f"{score.n_images - score.n_excluded} images ({score.n_excluded} excluded: no "
              f"box in labels or predictions; labels {labels_path})")
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
    if not (args.raw or args.strict or args.no_leaderboard):
        from kit.score import leaderboard

        run, post = _run_of(Path(args.submission))
        row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "file": str(args.submission),
               "sha256": hashlib.sha256(Path(args.submission).read_bytes()).hexdigest(),
               "run": run, "labels": str(labels_path), "images": score.n_images,
               "excluded": score.n_excluded, "map": score.map}
        for t, c in prf.items():
            row.update({f"P@{t:g}": c["precision"], f"R@{t:g}": c["recall"], f"F1@{t:g}": c["f1"]})
        row["postprocess"] = post
        if leaderboard.append(row, args.leaderboard) and not args.json:
            print(f"leaderboard: added to {args.leaderboard}")
    return 0
