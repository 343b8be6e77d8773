"""Post-processing of raw detections: the ONLY place in the kit where thresholds apply.

Raw detections (kit.runs.RAW_COLUMNS): ``patientId,score,x,y,w,h``, boxes top-left ``[x, y, w,
h]`` in pixels of the ORIGINAL 1024-px image, unthresholded, any number of rows per image.
Image scores (kit.runs.IMAGE_COLUMNS, ``raw_<split>_images.csv`` beside it): ``patientId,
p_opacity``, the image classifier's P(Lung Opacity) of every predicted image.

:meth:`PostProcess.apply` runs, per image, in this order (kit.score.tune sweeps exactly this):

1. classifier gate: drop every box of an image whose ``p_opacity < opacity_threshold``
   (0, the default, turns it off and needs no image scores);
2. image gate: drop every box of an image whose best raw score is below ``image_threshold``;
3. optional NMS (``nms_iou``): in rank order, drop a box whose IoU with a kept box is > nms_iou;
4. keep boxes with ``score >= score_threshold``;
5. keep the ``max_boxes`` best ranked (rank: score descending, equal scores later input first,
   the metric's own ranking);
6. scale w, h by ``box_scale`` about each box's centre, then clip to the 1024-px frame.

Both gates act on whole images and on the raw table, so they commute with each other and
with steps 3-6. Kept boxes stay in input order, so the metric ranks them as the tuner did.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import write_json
from kit.score.metric import iou_matrix, rank_order
from kit.runs import RAW_COLUMNS

Preds = dict[str, tuple[np.ndarray, np.ndarray]]   # patientId -> (scores (n,), boxes (n,4) xywh)


@dataclass(frozen=True)
class PostProcess:
    """Thresholds applied to raw detections (see the module docstring for the order).

    score_threshold: keep boxes with score >= this (0..1).
    image_threshold: keep an image's boxes only if its best raw score >= this (0..1).
    box_scale: factor on w and h about the box centre (pixels stay pixels; > 0).
    max_boxes: at most this many boxes per image (>= 1).
    nms_iou: if set, non-maximum suppression at this IoU (0 < nms_iou <= 1) before the rest.
    opacity_threshold: keep an image's boxes only if the classifier's p_opacity >= this (0..1;
        0 = off). Files written before this field existed load with 0.
    """

    score_threshold: float
    image_threshold: float
    box_scale: float
    max_boxes: int
    nms_iou: float | None = None
    opacity_threshold: float = 0.0

    def __post_init__(self) -> None:
        checks = [(0 <= self.score_threshold <= 1, "score_threshold must be in [0, 1]"),
                  (0 <= self.image_threshold <= 1, "image_threshold must be in [0, 1]"),
                  (self.box_scale > 0, "box_scale must be > 0"),
                  (int(self.max_boxes) == self.max_boxes and self.max_boxes >= 1,
                   "max_boxes must be an integer >= 1"),
                  (self.nms_iou is None or 0 < self.nms_iou <= 1, "nms_iou must be in (0, 1]"),
                  (0 <= self.opacity_threshold <= 1, "opacity_threshold must be in [0, 1]")]
        for ok, message in checks:
            if not ok:
                raise KitError(f"post-processing: {message} (got {self})")

    def to_json(self, path: str | Path) -> None:
        """Save as JSON (atomic)."""
        write_json(path, asdict(self))

    @classmethod
    def from_json(cls, path: str | Path) -> "PostProcess":
        """Load a file written by :meth:`to_json` (KitError when missing or malformed)."""
        path = Path(path)
        if not path.is_file():
            raise KitError("post-processing file not found: run `python -m kit tune` first",
                           path=path)
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise KitError(f"not a post-processing JSON ({exc}); rerun `python -m kit tune`",
                           path=path) from None

    def apply(self, raw: pd.DataFrame, image_scores: Mapping[str, float] | None = None) -> Preds:
        """Raw detections -> predictions for every image that keeps at least one box.

        ``image_scores``: patientId -> p_opacity (:func:`read_image_scores`); needed, for every
        image with raw rows, when ``opacity_threshold > 0`` (KitError otherwise), else unused.
        Images without kept boxes are absent from the result (scorers and the submission
        writer treat absent as "no box").
        """
        pid, scores, boxes = raw_arrays(raw)
        codes, ids = pd.factorize(pid, sort=False)
        keep = np.zeros(len(scores), bool)
        best = pd.Series(scores).groupby(codes).transform("max").to_numpy() if len(codes) else scores
        keep[best >= self.image_threshold] = True
        if self.opacity_threshold > 0:
            p = opacity_of(ids, image_scores, self.opacity_threshold)
            keep &= (p >= self.opacity_threshold)[codes]
        if self.nms_iou is not None:
            keep &= nms_mask(codes, scores, boxes, self.nms_iou)
        keep &= scores >= self.score_threshold
        idx = np.flatnonzero(keep)
        rank = rank_in_image(codes[idx], scores[idx])
        idx = idx[rank < self.max_boxes]                    # still in input order
        out_boxes = scale_boxes(boxes[idx], self.box_scale)
        out: Preds = {}
        for code, rows in pd.Series(np.arange(len(idx))).groupby(codes[idx]).indices.items():
            out[str(ids[code])] = (scores[idx][rows], out_boxes[rows])
        return out


def opacity_of(ids: "Sequence[str] | np.ndarray", image_scores: Mapping[str, float] | None,
               threshold: float) -> np.ndarray:
    """p_opacity (float64) of each id; KitError when the scores or an id are missing."""
    rerun = ("rerun `python -m kit predict` (it writes raw_<split>_images.csv), or tune "
             "without the classifier gate")
    if image_scores is None:
        raise KitError(f"opacity_threshold {threshold:g} gates on the image classifier's "
                       f"p_opacity, but this run has no image scores: {rerun}")
    missing = [str(p) for p in ids if p not in image_scores]
    if missing:
        raise KitError(f"{len(missing)} images with detections have no p_opacity in the image "
                       f"scores (first: {missing[0]!r}): {rerun}")
    return np.fromiter((image_scores[p] for p in ids), np.float64, len(ids))


def raw_arrays(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patientId str (n,), score float64 (n,), boxes float64 (n,4) xywh) of a raw table."""
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise KitError(f"raw detections lack columns {missing}; expected {','.join(RAW_COLUMNS)}")
    return (raw["patientId"].astype(str).to_numpy(), raw["score"].to_numpy(np.float64),
            raw[["x", "y", "w", "h"]].to_numpy(np.float64).reshape(-1, 4))


def rank_in_image(codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each row's rank within its image (0 = best): score descending, ties later row first."""
    n = len(scores)
    order = np.lexsort((-np.arange(n), -scores, codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1] if n else np.zeros(0, int)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - group_start
    return rank


def nms_mask(codes: np.ndarray, scores: np.ndarray, boxes: np.ndarray, iou: float) -> np.ndarray:
    """True for rows that survive greedy NMS within their image (suppressed: IoU > ``iou``)."""
    keep = np.ones(len(scores), bool)
    for rows in pd.Series(np.arange(len(scores))).groupby(codes).indices.values():
        rows = rows[rank_order(scores[rows])]
        overlap = iou_matrix(boxes[rows], boxes[rows]) > iou
        alive = np.ones(len(rows), bool)
        for i in range(len(rows)):
            if alive[i]:
                alive[i + 1:] &= ~overlap[i, i + 1:]
        keep[rows] = alive
    return keep


def scale_boxes(boxes: np.ndarray, scale: float, side: int = paths.IMAGE_SIZE) -> np.ndarray:
    """Scale xywh boxes' w, h by ``scale`` about their centres, then clip to [0, side]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
    w, h = boxes[:, 2] * scale, boxes[:, 3] * scale
    x1, y1 = np.clip(cx - w / 2, 0, side), np.clip(cy - h / 2, 0, side)
    x2, y2 = np.clip(cx + w / 2, 0, side), np.clip(cy + h / 2, 0, side)
    return np.column_stack([x1, y1, x2 - x1, y2 - y1])


