"""``report``: a run's pictures and the study's results table, gathered in runs/<run>/report.md.

Pictures (drawn by kit.report.plots):

* curves.png: training curves from history.csv (total loss and each part, train vs val);
* results.png: the results table of every run under the same runs/ folder, as bars + table;
* detections.png: validation images, ground truth (green) vs post-processed predictions (red);
* tuning.png: drawn by ``tune``; the report only embeds it.

The results table follows the study: per run its backbone, trained layers, augmentation, then
at IoU 0.25 / 0.5 / 0.75 precision ``P`` (the study calls it "mAP"), recall ``R`` (its "mAR") and
F1 of the post-processed validation detections, and the competition's mAP@[0.40:0.75].
Boxes are ``[x, y, w, h]`` (top-left, pixels of the original 1024-px image) unless said otherwise.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kit import paths
from kit.config import RunConfig
from kit.errors import KitError
from kit.io import read_csv, write_text
from kit.report.plots import IOUS, plot_detections, plot_history, plot_results, plot_roc
from kit.runs import resolve_run

RESULT_FILES = ("raw_val.csv", "postprocess.json", "val_ids.csv")
N_POSITIVES = 6      # detections.png: positive images first (up to this many) ...
N_SHOWN = 12         # ... then negatives with the most confident false positives, this many in all

Preds = dict[str, tuple[np.ndarray, np.ndarray]]   # patientId -> (scores (n,), boxes (n,4) xywh)


# ---- results of a run ----------------------------------------------------------------------
@dataclass(frozen=True)
class ValResults:
    """A run's validation set: ground truth and post-processed predictions for each val id."""

    config: RunConfig
    ids: list[str]                 # val_ids.csv order
    gt: dict[str, np.ndarray]      # patientId -> (k, 4) xywh, 1024 frame
    preds: Preds                   # patientId -> (scores, boxes); every val id present
    image_scores: dict[str, float] | None = None   # raw_val_images.csv; None: none in the run


def val_ground_truth(run: Path, labels_memo: dict | None = None
                     ) -> tuple[RunConfig, list[str], dict[str, np.ndarray]]:
    """(config, val ids, their ground truth) from config.json, val_ids.csv and the labels of the
    run's data_dir (<data_dir>/stage_2_train_labels.csv). ``labels_memo`` shares parsed labels."""
    from kit.data.labels import boxes_by_patient, read_labels
    from kit.runs import read_ids

    run = Path(run)
    cfg = RunConfig.load(run / "config.json")
    labels_path = Path(cfg.data_dir or paths.default_data_dir()) / paths.TRAIN_LABELS
    memo = {} if labels_memo is None else labels_memo
    key = str(labels_path.resolve())
    if key not in memo:
        memo[key] = boxes_by_patient(read_labels(labels_path))
    boxes = memo[key]
    ids = read_ids(run / "val_ids.csv")
    for i, pid in enumerate(ids):
        if pid not in boxes:
            raise KitError(f"patientId {pid!r} is not in {labels_path}: the run's data_dir "
                           "changed?", path=run / "val_ids.csv", row=i + 2, field="patientId")
    return cfg, ids, {pid: boxes[pid] for pid in ids}


def load_val_results(run: Path, labels_memo: dict | None = None) -> ValResults:
    """Ground truth (:func:`val_ground_truth`) and post-processed predictions.

    Needs config.json, val_ids.csv, raw_val.csv and postprocess.json in ``run`` (and
    raw_val_images.csv when postprocess.json gates on the classifier). Val images without any
    detection get empty predictions.
    """
    from kit.score.postprocess import PostProcess
    from kit.runs import image_scores_beside, read_raw

    run = Path(run)
    cfg, ids, gt = val_ground_truth(run, labels_memo)
    post = PostProcess.from_json(run / "postprocess.json")
    raw = read_raw(run / "raw_val.csv")
    stray = ~raw["patientId"].isin(set(ids)).to_numpy()
    if stray.any():
        raise KitError("this patientId is not a validation image (val_ids.csv); rerun "
                       "`python -m kit predict --split val`", path=run / "raw_val.csv",
                       row=int(np.flatnonzero(stray)[0]) + 2, field="patientId")
    image_scores = image_scores_beside(run / "raw_val.csv")
    kept = post.apply(raw, image_scores)
    empty = (np.zeros(0), np.zeros((0, 4)))
    preds = {pid: tuple(np.asarray(a, np.float64) for a in kept.get(pid, empty)) for pid in ids}
    return ValResults(cfg, ids, gt, preds, image_scores)


def classifier_section(run: Path) -> tuple[list[str], str | None]:
    """report.md lines on the image classifier (ROC AUC on validation, roc.png drawn) and the
    reason roc.png could not be made; ([], None) when the run has no raw_val_images.csv."""
    from kit.score.metric import roc_auc, roc_curve
    from kit.runs import image_scores_beside
    from kit.runs import image_scores_path

    if not image_scores_path(run, "val").is_file():
        return [], None
    try:
        image_scores = image_scores_beside(run / "raw_val.csv")
        _, ids, gt = val_ground_truth(run)
        missing = [pid for pid in ids if pid not in image_scores]
        if missing:
            raise KitError(f"{len(missing)} validation images have no p_opacity (first: "
                           f"{missing[0]!r}): rerun `python -m kit predict --split val`",
                           path=image_scores_path(run, "val"))
        positive = np.array([len(gt[pid]) > 0 for pid in ids], bool)
        p = np.array([image_scores[pid] for pid in ids])
        auc = roc_auc(positive, p)
        n_pos = int(positive.sum())
        plot_roc(*roc_curve(positive, p), auc, n_pos, len(ids) - n_pos, run / "roc.png")
        detector = roc_auc(positive, best_box_scores(run / "raw_val.csv", ids))
    except (KitError, ValueError) as exc:
        return [], f"roc.png: {exc}"
    return ["## Image classifier (validation)", "",
            f"ROC AUC **{auc:.4f}** on {len(ids)} validation images ({n_pos} with a box, "
            f"{len(ids) - n_pos} without): the classifier's P(Lung Opacity) "
            f"({image_scores_path(run, 'val').name}) against \"the image has a box\"; 0.5 is "
            f"chance, ties count one half. The detector's best raw box score per image (0 "
            f"without a box) ranks the same images with ROC AUC {detector:.4f}: the gate can "
            "only help where the classifier knows what the boxes do not.", *refit_line(run),
            "", "![Image classifier ROC](roc.png)", ""], None


def best_box_scores(raw_path: Path, ids: Sequence[str]) -> np.ndarray:
    """Each image's highest raw detection score (0 for an image without a detection)."""
    from kit.runs import read_raw

    best = read_raw(raw_path).groupby("patientId")["score"].max()
    return np.array([float(best.get(pid, 0.0)) for pid in ids])


def refit_line(run: Path) -> list[str]:
    """A sentence on the image head's refit after training (train_state.json), if there was one."""
    import json

    try:
        refit = json.loads((run / "train_state.json").read_text()).get("image_head_refit")
    except (OSError, ValueError):
        return []
    if not refit:
        return []
    return ["", f"The head was refitted after training on {refit['images']} training images "
                f"and their flips ({refit['checkpoint']}: loss {refit['loss_before']:.3f} -> "
                f"{refit['loss_after']:.3f}, training accuracy {refit['train_accuracy']:.3f})."]


def trained_layers(cfg: RunConfig) -> str:
    """The schedule's layers, e.g. ``heads > 4+ > all`` (repeats of one stage shown once)."""
    names: list[str] = []
    for stage in cfg.stages:
        if not names or names[-1] != stage.layers:
            names.append(stage.layers)
    return " > ".join(names)


def results_table(runs: Sequence[Path]) -> pd.DataFrame:
    """One row per run that has raw_val.csv + postprocess.json + val_ids.csv (others skipped).

    Columns: run, backbone, layers, augmentation (yes/no), images, then P@t, R@t, F1@t for
    t in 0.25 / 0.5 / 0.75 (post-processed val detections, :func:`kit.score.metric.prf_table`) and
    mAP (:func:`kit.score.metric.score_dataset`).
    """
    from kit.score.metric import prf_table, score_dataset

    rows, memo = [], {}
    for run in runs:
        run = Path(run)
        if not all((run / name).is_file() for name in RESULT_FILES):
            continue
        res = load_val_results(run, memo)
        row = {"run": run.name, "backbone": res.config.backbone,
               "layers": trained_layers(res.config),
               "augmentation": "yes" if res.config.augmented else "no", "images": len(res.ids)}
        for t, counts in prf_table(res.gt, res.preds, IOUS).items():
            row.update({f"P@{t:g}": counts["precision"], f"R@{t:g}": counts["recall"],
                        f"F1@{t:g}": counts["f1"]})
        row["mAP"] = score_dataset(res.gt, res.preds).map
        rows.append(row)
    columns = ["run", "backbone", "layers", "augmentation", "images"]
    columns += [f"{m}@{t:g}" for t in IOUS for m in ("P", "R", "F1")] + ["mAP"]
    return pd.DataFrame(rows, columns=columns)


def pick_examples(res: ValResults, n: int = N_SHOWN, n_pos: int = N_POSITIVES) -> list[str]:
    """Val ids to draw: positives first (val order), then negatives by their top false positive.

    Negatives without any prediction come last; fewer negatives leave room for more positives.
    """
    pos = [pid for pid in res.ids if len(res.gt[pid])]
    neg = [pid for pid in res.ids if not len(res.gt[pid])]
    top = {pid: float(res.preds[pid][0].max()) if len(res.preds[pid][0]) else -1.0 for pid in neg}
    neg = sorted(neg, key=lambda pid: -top[pid])     # stable: equal scores keep val order
    n_neg = min(len(neg), n - min(n_pos, len(pos)))
    return pos[:n - n_neg] + neg[:n_neg]


def val_images(cfg: RunConfig, ids: Sequence[str]) -> list[np.ndarray]:
    """uint8 (S, S) images of ``ids`` at the run's size: from the prepared cache when it holds
    them, else decoded from <data_dir>/stage_2_train_images/ (a report never prepares a cache)."""
    from kit.data import dicom
    from kit.data.prepare import Cache, default_cache_dir

    data_dir = Path(cfg.data_dir or paths.default_data_dir())
    cache_dir = default_cache_dir(data_dir, cfg.image_size)
    cache = Cache(cache_dir) if (cache_dir / "cache.json").is_file() else None
    cached = set(cache.meta["patientId"]) if cache else set()
    return [cache.load(pid) if pid in cached else
            dicom.read_image(data_dir / paths.TRAIN_IMAGES / f"{pid}.dcm", cfg.image_size)[0]
            for pid in ids]


def draw_val_examples(res: ValResults, out: Path) -> None:
    """detections.png: the :func:`pick_examples` images, GT vs post-processed predictions."""
    from kit.score.metric import image_score

    chosen = pick_examples(res)
    titles = []
    for pid in chosen:
        score = image_score(res.gt[pid], *res.preds[pid])
        titles.append(f"{pid[:13]}  GT {len(res.gt[pid])}  "
                      f"score {'excl.' if score is None else f'{score:.2f}'}")
    plot_detections(val_images(res.config, chosen), [res.gt[pid] for pid in chosen],
                    [res.preds[pid] for pid in chosen], titles, out)


# ---- report.md -----------------------------------------------------------------------------
def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (floats with 3 decimals)."""
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---:" if table[c].dtype.kind in "fi" else "---" for c in table) + "|"
    body = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def config_summary(cfg: RunConfig) -> str:
    """Markdown bullet list of what matters in a run's config."""
    stages = ", ".join(f"{s.layers} x{s.epochs} (lr x{s.lr_factor:g}"
                       f"{', augmented' if s.augment else ''})" for s in cfg.stages)
    lines = [f"- name: {cfg.name}", f"- backbone: {cfg.backbone}, init: {cfg.init}",
             f"- image size: {cfg.image_size} px, anchors {list(cfg.rpn_anchor_scales)}",
             f"- schedule: {stages}; {cfg.total_epochs} epochs, base lr {cfg.learning_rate:g}",
             f"- test-time augmentation: {cfg.tta}", f"- data: {cfg.data_dir or '(not set)'}"]
    if cfg.notes:
        lines.append(f"- notes: {cfg.notes}")
    return "\n".join(lines)


def read_history(path: Path) -> pd.DataFrame:
    """Keras' CSV training log (KitError when unreadable)."""
    return read_csv(path, not_found="training log not found")


def _make_picture(out: Path, draw, missing: str | None) -> str | None:
    """Draw ``out`` unless ``missing`` already says why it cannot be made; returns the reason.

    An input that turns out unreadable while drawing (KitError, e.g. a DICOM that is not on this
    machine) also becomes the reason.
    """
    if not missing:
        try:
            draw(out)
            return None
        except KitError as exc:
            missing = str(exc)
    return missing


def write_report(run: Path) -> Path:
    """Write runs/<run>/report.md (atomic) with its pictures; returns the path of report.md.

    A picture whose inputs are missing is listed in report.md with the reason, not skipped.
    """
    return _write_report(Path(run))[0]


def _write_report(run: Path) -> tuple[Path, pd.DataFrame]:
    """:func:`write_report`, also returning the results table it drew."""
    cfg = RunConfig.load(run / "config.json")
    runs = sorted(p for p in run.parent.iterdir() if p.is_dir())
    table = results_table(runs)
    missing_files = [name for name in RESULT_FILES if not (run / name).is_file()]
    history = run / "history.csv"
    reasons = {
        "curves.png": _make_picture(
            run / "curves.png", lambda out: plot_history(read_history(history), out),
            None if history.is_file() else "history.csv is missing: train the run "
                                           "(`python -m kit train`)"),
        "results.png": _make_picture(
            run / "results.png", lambda out: plot_results(table, out),
            None if len(table) else f"no run under {run.parent}/ has "
                                    f"{' + '.join(RESULT_FILES)} yet"),
        "tuning.png": None if (run / "tuning.png").is_file()
        else "tuning.png is missing: run `python -m kit tune`",
        "detections.png": _make_picture(
            run / "detections.png", lambda out: draw_val_examples(load_val_results(run), out),
            None if not missing_files else f"{', '.join(missing_files)} missing: run "
                                           "`python -m kit predict` and `python -m kit tune`"),
    }
    captions = {"curves.png": "Training curves", "results.png": "Results of all runs",
                "tuning.png": "Post-processing sweep (tune)",
                "detections.png": "Validation images: ground truth (green) vs prediction (red)"}
    parts = [f"# Report: {run.name}", "", "## Configuration", "", config_summary(cfg), "",
             "## Results (validation, post-processed)", ""]
    if len(table):
        parts += [markdown_table(table), "",
                  "P and R are what the study calls mAP and mAR (precision and recall of the "
                  "boxes at that IoU); mAP is the competition's mAP@[0.40:0.75]."]
    else:
        parts.append(f"No run has validation results yet ({reasons['results.png']}).")
    classifier, roc_reason = classifier_section(run)
    parts += ["", *classifier, "## Pictures", ""]
    for name, caption in captions.items():
        if reasons[name] is None:
            parts += [f"### {caption}", "", f"![{caption}]({name})", ""]
    absent = [f"- {name}: {reason}" for name, reason in reasons.items() if reason]
    absent += [f"- {roc_reason}"] if roc_reason else []
    if absent:
        parts += ["### Pictures that could not be made", "", *absent, ""]
    out = run / "report.md"
    write_text(out, "\n".join(parts))
    return out, table


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="latest", help="run folder, name or 'latest'")
    parser.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                        help="folder of run folders (its runs make the results table)")


def run_report(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, args.runs_dir)
    out, table = _write_report(run)
    print(out)
    if len(table):
        print(table.drop(columns=["backbone", "layers"]).to_string(index=False, float_format="%.3f"))
    else:
        print("no run has validation results yet (raw_val.csv + postprocess.json + val_ids.csv)")
    return 0
