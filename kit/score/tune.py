"""``tune``: sweep post-processing settings on raw validation detections -> postprocess.json.

The grid is box_scale x score_threshold x max_boxes x image_threshold x opacity_threshold
(``nms_iou`` is fixed, not swept; the classifier gate ``opacity_threshold`` only when the run has
image scores, raw_val_images.csv, else it stays 0). Every setting is scored with the
competition metric, vectorised across settings:

* with the predictions of an image ranked once (kit.score.metric's ranking), every setting keeps a
  PREFIX of that ranking: L = min(#scores >= threshold, max_boxes), or 0 when the image fails
  a gate (NMS commutes with the score threshold, so it runs first);
* matching a prefix gives the prefix of the full matching (kit.score.metric.match_predictions), so
  per box scale ONE matching yields the image score for every L (kit.score.metric.prefix_image_scores);
* the gates only choose, per image, between its score at L and its score at 0 (0 when it has
  ground truth, excluded when not), and both are thresholds: an image passes the g smallest
  box-score gates and the o smallest classifier gates. Per box scale, images are summed into
  (g, o) cells once; the gated-in sums of every gate pair are 2-D suffix sums of those cells,
  so the gate grids cost almost nothing. A setting's mAP is total / counted.

The score of a setting equals ``score_dataset(gt, PostProcess(...).apply(raw, image_scores))``
(tested on every setting of a random grid).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from kit import paths
from kit.errors import KitError
from kit.score.metric import make_batch, match_predictions, prefix_image_scores
from kit.score.postprocess import PostProcess, nms_mask, opacity_of, raw_arrays, scale_boxes
from kit.runs import image_scores_beside, read_ids, read_raw

THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(100))          # 0.00 .. 0.99
# box scale: both ways. RSNA's winners shrank boxes (0.83-0.875); on the hard demo films, whose
# readers draw generous boxes, the tuner picks 1.0-1.2 (bench/levers.py, README's lever table)
SCALES = tuple(round(0.775 + 0.025 * i, 3) for i in range(20))      # 0.775 .. 1.25
MAX_BOXES = (1, 2, 3, 4)
IMAGE_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))       # 0.0 .. 0.9
# classifier gate: 0 (off), then finer below 0.5, where a classifier trained on ~23% positives
# puts most of the negatives it is unsure of
OPACITY_THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6,
                      0.7, 0.8, 0.9)
CHUNK = 512   # images per vectorised block (bounds memory: CHUNK x settings floats)


@dataclass(frozen=True)
class Sweep:
    """mAP of every setting: ``map[scale, threshold, max_boxes, image_threshold,
    opacity_threshold]`` (NaN: all images excluded)."""

    scales: tuple[float, ...]
    thresholds: tuple[float, ...]
    max_boxes: tuple[int, ...]
    image_thresholds: tuple[float, ...]
    opacity_thresholds: tuple[float, ...]
    nms_iou: float | None
    map: np.ndarray
    n_images: int

    def setting(self, index: tuple[int, ...]) -> PostProcess:
        s, t, m, g, o = index
        return PostProcess(score_threshold=self.thresholds[t],
                           image_threshold=self.image_thresholds[g], box_scale=self.scales[s],
                           max_boxes=self.max_boxes[m], nms_iou=self.nms_iou,
                           opacity_threshold=self.opacity_thresholds[o])

    def top(self, n: int = 10) -> list[tuple[PostProcess, float]]:
        """The n best settings, best first (ties: first in grid order)."""
        flat = np.where(np.isnan(self.map), -np.inf, self.map).ravel()
        order = np.argsort(-flat, kind="stable")[:n]
        return [(self.setting(np.unravel_index(i, self.map.shape)), float(flat[i])) for i in order]

    @property
    def best(self) -> tuple[PostProcess, float]:
        return self.top(1)[0]


def sweep(raw: pd.DataFrame, gt: Mapping[str, np.ndarray], *,
          thresholds: Sequence[float] = THRESHOLDS, scales: Sequence[float] = SCALES,
          max_boxes: Sequence[int] = MAX_BOXES, image_thresholds: Sequence[float] = IMAGE_THRESHOLDS,
          opacity_thresholds: Sequence[float] = (0.0,),
          image_scores: Mapping[str, float] | None = None,
          nms_iou: float | None = None, progress: bool = False) -> Sweep:
    """Score every setting of the grid on the images of ``gt`` (all of them, with or without rows).

    ``raw``: raw detections (RAW_COLUMNS, xywh in 1024-px pixels); ``gt``: patientId -> (k,4) xywh;
    ``image_scores``: patientId -> p_opacity, needed (for every image with raw rows) when an
    opacity threshold is > 0. Raw rows for an id not in ``gt`` raise KitError.
    """
    for name, values, ok in [("thresholds", thresholds, lambda v: 0 <= v <= 1),
                             ("image thresholds", image_thresholds, lambda v: 0 <= v <= 1),
                             ("opacity thresholds", opacity_thresholds, lambda v: 0 <= v <= 1),
                             ("scales", scales, lambda v: v > 0),
                             ("max boxes", max_boxes, lambda v: int(v) == v and v >= 1)]:
        bad = [v for v in values if not ok(v)]
        if bad or not len(values):
            raise KitError(f"tune grid: {name} {list(values)} must be non-empty and valid "
                           "(thresholds in [0, 1], scales > 0, max boxes >= 1)")
    pid, scores, boxes = raw_arrays(raw)
    strays = sorted(set(pid) - set(gt))
    if strays:
        raise KitError(f"{len(strays)} patientIds of the raw detections are not in the labels "
                       f"(first: {strays[0]!r}); tune on the validation images")
    opacity = np.asarray(opacity_thresholds, np.float64)
    with_rows = pd.unique(pid)
    p_opacity = dict(zip(with_rows, opacity_of(with_rows, image_scores, opacity.max())
                         if opacity.max() > 0 else np.ones(len(with_rows))))
    if nms_iou is not None:
        keep = nms_mask(pd.factorize(pid)[0], scores, boxes, nms_iou)
        pid, scores, boxes = pid[keep], scores[keep], boxes[keep]
    ids = list(gt)
    rows = pd.Series(np.arange(len(pid))).groupby(pid).indices
    none = np.zeros(0, np.int64)
    thr = np.asarray(thresholds, np.float64)
    mb = np.asarray(max_boxes, np.int64)
    gate = np.asarray(image_thresholds, np.float64)
    gate_order, opacity_order = np.argsort(gate, kind="stable"), np.argsort(opacity, kind="stable")
    n_gate, n_opacity, n_pairs = len(gate), len(opacity), len(thr) * len(mb)
    # per scale, per cell (gates passed, classifier gates passed): sums of the gated-in image
    # scores, their non-excluded count, and the number of images with ground truth
    cells = np.zeros((len(scales), (n_gate + 1) * (n_opacity + 1), 2 * n_pairs + 1))
    blocks = range(0, len(ids), CHUNK)
    for start in tqdm(blocks, desc="tune", unit="block", disable=not progress):
        chunk = ids[start:start + CHUNK]
        sel = [rows.get(p, none) for p in chunk]
        batch = make_batch([np.asarray(gt[p], np.float64).reshape(-1, 4) for p in chunk],
                           [(scores[r], boxes[r]) for r in sel])
        # kept prefix length of a gated-in image per (threshold, max_boxes): (N, thr * mb)
        n_ge = (batch.scores[:, :, None] >= thr[None, None, :]).sum(axis=1)
        length = np.minimum(n_ge[:, :, None], mb[None, None, :]).reshape(len(chunk), n_pairs)
        # an image passes the j-th smallest gate iff j < passed (no rows: best -inf, passes none)
        passed = np.searchsorted(gate[gate_order], batch.scores[:, 0], side="right")
        p_chunk = np.array([p_opacity.get(q, 0.0) for q in chunk])
        passed_o = np.searchsorted(opacity[opacity_order], p_chunk, side="right")
        cell = passed * (n_opacity + 1) + passed_o
        order = np.argsort(cell, kind="stable")
        used, first = np.unique(cell[order], return_index=True)
        has_gt = (batch.n_gt > 0).astype(np.float64)[:, None]
        for s, scale in enumerate(scales):
            scaled = scale_boxes(batch.boxes.reshape(-1, 4), scale).reshape(batch.boxes.shape)
            matched = match_predictions(replace(batch, boxes=scaled))
            table = prefix_image_scores(matched, batch.n_gt)              # (N, P+1)
            values = np.take_along_axis(table, length, axis=1)            # (N, thr * mb)
            valid = ~np.isnan(values)
            per_image = np.hstack([np.where(valid, values, 0.0), valid, has_gt])[order]
            cells[s, used] += np.add.reduceat(per_image, first, axis=0)
    # gated in at (sorted) gate g, classifier gate o: the cells with passed > g, passed_o > o
    cells = cells.reshape(len(scales), n_gate + 1, n_opacity + 1, -1)
    inside = cells[:, ::-1, ::-1].cumsum(axis=1).cumsum(axis=2)[:, ::-1, ::-1][:, 1:, 1:]
    total = inside[..., :n_pairs]
    # a gated-out image keeps nothing: it scores 0 when it has ground truth, else is excluded
    counted = inside[..., n_pairs:2 * n_pairs] + (cells[..., -1].sum(axis=(1, 2))[:, None, None]
                                                  - inside[..., -1])[..., None]
    with np.errstate(invalid="ignore"):
        result = np.where(counted > 0, total / np.where(counted > 0, counted, 1), np.nan)
    # (scale, sorted gate, sorted opacity, thr * mb) -> (scale, thr, mb, gate, opacity)
    result = result[:, np.argsort(gate_order)][:, :, np.argsort(opacity_order)]
    result = result.reshape(len(scales), n_gate, n_opacity, len(thr), len(mb))
    result = result.transpose(0, 3, 4, 1, 2)
    return Sweep(tuple(scales), tuple(thresholds), tuple(int(m) for m in mb),
                 tuple(image_thresholds), tuple(opacity_thresholds), nms_iou, result, len(ids))


def plot_sweep(result: Sweep, path: Path) -> None:
    """PNG: best mAP (over max_boxes and both gates) vs score threshold, one line per scale;
    with a swept classifier gate, a second panel: best mAP vs opacity threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kit.io import save_figure

    finite = np.where(np.isnan(result.map), -np.inf, result.map)
    gated = len(result.opacity_thresholds) > 1
    fig, axes = plt.subplots(1, 2 if gated else 1, figsize=(11 if gated else 7, 4.5),
                             squeeze=False, gridspec_kw={"width_ratios": [3, 2]} if gated else None)
    ax = axes[0, 0]
    best = finite.max(axis=(2, 3, 4))
    for s, scale in enumerate(result.scales):
        ax.plot(result.thresholds, np.where(np.isfinite(best[s]), best[s], np.nan),
                label=f"box scale {scale:g}")
    post, value = result.best
    ax.scatter([post.score_threshold], [value], color="black", zorder=3,
               label=f"best {value:.4f}")
    ax.set_xlabel("score threshold")
    ax.set_ylabel("mAP@[0.40:0.75] (best max_boxes, gates)")
    ax.set_title(f"post-processing sweep on {result.n_images} validation images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if gated:
        ax = axes[0, 1]
        by_gate = finite.max(axis=(0, 1, 2, 3))
        ax.plot(result.opacity_thresholds, np.where(np.isfinite(by_gate), by_gate, np.nan), "o-")
        ax.scatter([post.opacity_threshold], [value], color="black", zorder=3)
        ax.set_xlabel("classifier gate: opacity threshold (0 = off)")
        ax.set_ylabel("best mAP@[0.40:0.75]")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(path, fig)


def add_tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None, help="run folder, name or 'latest': reads raw_val.csv, "
                   "val_ids.csv and the labels of the run's data_dir")
    p.add_argument("--raw", type=Path, default=None, help="raw detections CSV (instead of --run)")
    p.add_argument("--labels", type=Path, default=None,
                   help=f"label CSV (with --raw; with --run default DATA_DIR/{paths.TRAIN_LABELS})")
    p.add_argument("--ids", type=Path, default=None,
                   help="CSV with a patientId column: the images to tune on (default: the run's "
                        "val_ids.csv, else the ids in the raw table)")
    p.add_argument("--out", type=Path, default=None,
                   help="postprocess.json to write (default: beside the raw table)")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: tuning.png beside --out)")
    p.add_argument("--thresholds", nargs="+", default=THRESHOLDS, metavar="T",
                   help="box score thresholds to sweep, e.g. 0.1,0.2,0.3 or 0.1 0.2 0.3 "
                        "(default 0.00 .. 0.99 by 0.01)")
    p.add_argument("--scales", nargs="+", default=SCALES, metavar="S",
                   help="box scale factors to sweep (default 0.775 .. 1.25 by 0.025)")
    p.add_argument("--max-boxes", nargs="+", default=MAX_BOXES, metavar="N",
                   help="most boxes per image to sweep (default 1 2 3 4)")
    p.add_argument("--image-thresholds", nargs="+", default=IMAGE_THRESHOLDS, metavar="T",
                   help="image gates on the top box score to sweep (default 0.0 .. 0.9 by 0.1)")
    p.add_argument("--opacity-thresholds", nargs="+", default=None, metavar="T",
                   help="classifier gate grid (default: a 0..0.9 grid when the raw table has its "
                        "image scores, raw_val_images.csv, beside it; else 0 = off)")
    p.add_argument("--nms-iou", type=float, default=None, help="fixed NMS IoU (default: none)")
    p.add_argument("--top", type=int, default=10, help="settings to print")


def parse_grid(flag: str, items, kind: type = float) -> tuple:
    """A grid flag's values: numbers given as separate words and/or joined by commas
    ("0.1,0.2,0.3" or "0.1 0.2 0.3"); anything else is a KitError quoting the bad item."""
    if items is None:
        return None
    values = []
    for item in items:
        if isinstance(item, (int, float)):
            values.append(kind(item))
            continue
        parts = [p for p in str(item).split(",") if p.strip()] or [str(item)]
        for part in parts:
            try:
                number = float(part)
                if kind is int and number != int(number):
                    raise ValueError
                values.append(kind(number))
            except ValueError:
                example = "1,2,3\" or \"1 2 3" if kind is int else "0.1,0.2,0.3\" or \"0.1 0.2 0.3"
                where = "" if part == str(item) else f" in {str(item)!r}"
                raise KitError(f"{flag}: {part!r}{where} is not "
                               f"{'a whole number' if kind is int else 'a number'}; give the grid as "
                               f"\"{example}\"") from None
    return tuple(values)


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """(raw table, labels, ids file or None) from --run or --raw/--labels."""
    if (args.run is None) == (args.raw is None):
        raise KitError("give exactly one of --run RUN or --raw RAW.csv (with --labels)")
    if args.raw is not None:
        if args.labels is None:
            raise KitError("--raw needs --labels (the label CSV covering its images)")
        return args.raw, args.labels, args.ids
    from kit.config import RunConfig
    from kit.paths import default_data_dir
    from kit.runs import resolve_run

    run = resolve_run(args.run)
    cfg = RunConfig.load(run / "config.json")
    labels = args.labels or Path(cfg.data_dir or default_data_dir()) / paths.TRAIN_LABELS
    ids = args.ids or (run / "val_ids.csv" if (run / "val_ids.csv").is_file() else None)
    return run / "raw_val.csv", labels, ids


SMALL_VAL_POSITIVES = 200      # fewer positive images than this: tune warns its mAP is optimistic


def run_tune(args: argparse.Namespace) -> int:
    from kit.data.labels import boxes_by_patient, read_labels

    grids = {name: parse_grid(f"--{name.replace('_', '-')}", getattr(args, name), kind)
             for name, kind in (("thresholds", float), ("scales", float), ("max_boxes", int),
                                ("image_thresholds", float), ("opacity_thresholds", float))}
    raw_path, labels_path, ids_path = _inputs(args)
    raw = read_raw(raw_path)
    boxes = boxes_by_patient(read_labels(labels_path))
    if ids_path is not None:
        ids = read_ids(ids_path)
    else:
        ids = list(dict.fromkeys(raw["patientId"]))
        print(f"note: no id list; tuning on the {len(ids)} images that have raw detections "
              "(images without any detection are not seen: pass --ids)")
    missing = [p for p in ids if p not in boxes]
    if missing:
        raise KitError(f"{len(missing)} images have no labels (first: {missing[0]!r})",
                       path=labels_path, field="patientId")
    image_scores = image_scores_beside(raw_path)
    opacity = grids["opacity_thresholds"] or (OPACITY_THRESHOLDS if image_scores else (0.0,))
    if image_scores is None:
        print("note: no image scores beside the raw table: the classifier gate stays off")
    result = sweep(raw, {p: boxes[p] for p in ids}, thresholds=grids["thresholds"],
                   scales=grids["scales"], max_boxes=grids["max_boxes"],
                   image_thresholds=grids["image_thresholds"], opacity_thresholds=opacity,
                   image_scores=image_scores, nms_iou=args.nms_iou, progress=True)
    n_settings = result.map.size
    print(f"{n_settings:,} settings x {result.n_images:,} images")
    print(f"{'rank':>4} {'mAP':>7} {'threshold':>9} {'scale':>6} {'max_boxes':>9} "
          f"{'image_gate':>10} {'opacity_gate':>12}")
    for i, (post, value) in enumerate(result.top(args.top), 1):
        print(f"{i:>4} {value:7.4f} {post.score_threshold:9.2f} {post.box_scale:6.3f} "
              f"{post.max_boxes:9d} {post.image_threshold:10.2f} {post.opacity_threshold:12.2f}")
    best, value = result.best
    out = args.out or Path(raw_path).parent / "postprocess.json"
    best.to_json(out)
    plot = args.plot or Path(out).parent / "tuning.png"
    plot_sweep(result, plot)
    print(f"best mAP {value:.4f}: wrote {out} and {plot}")
    positives = sum(1 for pid in ids if len(boxes[pid]))
    if positives < SMALL_VAL_POSITIVES:
        print(small_val_note(len(ids), positives, n_settings))
    return 0


def small_val_note(n_images: int, positives: int, n_settings: int) -> str:
    """The warning tune prints when its best mAP was picked on few positive images."""
    return (f"note: the best of {n_settings:,} settings on {n_images} images ({positives} with a "
            f"box): one image moves the mAP by about {1 / max(positives, 1):.3f}, so the tuned "
            "mAP is optimistic for new images; judge settings by a held-out set (`score` on "
            "another split) or tune on more images")
