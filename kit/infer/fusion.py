"""Weighted box fusion (WBF) for one class, pure numpy: flip TTA and run ensembles.

:func:`weighted_boxes_fusion` follows the semantics of ``ensemble_boxes.weighted_boxes_fusion``
(Solovyev et al., "Weighted boxes fusion", 2019) for a single class, so the kit needs no
third-party package at run time (Kaggle's image lacks it; kernels may run offline):

1. every box of every model with ``score >= skip_box_thr`` is clipped to [0, 1] (corners
   swapped when reversed); boxes of zero area are dropped; each gets the weighted score
   ``score * weights[model]``;
2. boxes are visited by weighted score, highest first (the reference's ``argsort()[::-1]``);
   a box joins the cluster whose current fused box it overlaps most when that IoU is strictly
   above ``iou_thr``, else it starts a new cluster;
3. a cluster's fused box is the mean of its boxes weighted by their weighted scores;
   its score (``conf_type``):
   ``avg``: mean weighted score * min(n_models, n_boxes) / sum(weights);
   ``max``: max weighted score / max(weights);
   ``box_and_model_avg``: mean weighted score * n_boxes / (sum of its boxes' weights)
   * (sum of the weights of the distinct models in it) / sum(weights);
4. clusters come out by score, highest first (the reference's ``argsort()[::-1]``).

The reference accumulates fused boxes in float32; here everything is float64, so results equal
the reference run in float64 to the last bit, and the stock reference to float32 precision.

:func:`fuse_raw` fuses raw detection tables (kit.runs.RAW_COLUMNS: top-left ``x, y, w, h`` in
the 1024-px frame) image by image: an ensemble's test detections.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.runs import RAW_COLUMNS

CONF_TYPES = ("avg", "max", "box_and_model_avg")


def check_weights(weights: Sequence[float] | None, n_models: int) -> np.ndarray:
    """Model weights as float64 (n_models,): ones by default; each finite and > 0."""
    if weights is None:
        return np.ones(n_models)
    w = np.asarray(weights, np.float64).reshape(-1)
    if len(w) != n_models:
        raise KitError(f"box fusion: {len(w)} weights for {n_models} models (need one per model)")
    if not (np.isfinite(w) & (w > 0)).all():
        raise KitError(f"box fusion: weights must be finite and > 0 (got {w.tolist()})")
    return w


def _prefilter(boxes_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray],
               weights: np.ndarray, skip_box_thr: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (n,4) x1y1x2y2 clipped to [0, 1], weighted scores (n,), model index (n,)),
    sorted by weighted score, highest first, the way the reference sorts them."""
    boxes = [np.asarray(b, np.float64).reshape(-1, 4) for b in boxes_list]
    scores = [np.asarray(s, np.float64).reshape(-1) for s in scores_list]
    for m, (b, s) in enumerate(zip(boxes, scores)):
        if len(b) != len(s):
            raise KitError(f"box fusion: model {m} has {len(b)} boxes but {len(s)} scores")
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    models = np.repeat(np.arange(len(boxes)), [len(s) for s in scores])
    b, s = np.concatenate(boxes), np.concatenate(scores)
    lo = np.clip(np.minimum(b[:, :2], b[:, 2:]), 0.0, 1.0)
    hi = np.clip(np.maximum(b[:, :2], b[:, 2:]), 0.0, 1.0)
    area = (hi[:, 0] - lo[:, 0]) * (hi[:, 1] - lo[:, 1])
    keep = np.flatnonzero((s >= skip_box_thr) & (area != 0.0))
    weighted = s[keep] * weights[models[keep]]
    order = keep[np.argsort(weighted)[::-1]]
    return (np.concatenate([lo[order], hi[order]], axis=1), s[order] * weights[models[order]],
            models[order])


def weighted_boxes_fusion(boxes_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray],
                          weights: Sequence[float] | None = None, iou_thr: float = 0.55,
                          skip_box_thr: float = 0.0, conf_type: str = "avg"
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Fuse the boxes of several models (or TTA views) of ONE image; see the module docstring.

    ``boxes_list[m]``: (n_m, 4) normalised ``x1, y1, x2, y2`` in [0, 1] (out-of-range corners
    are clipped); ``scores_list[m]``: (n_m,) in [0, 1]; ``weights``: one per model (default 1).
    Returns (boxes (k, 4) float64 x1y1x2y2, scores (k,) float64), best score first.
    """
    if conf_type not in CONF_TYPES:
        raise KitError(f"box fusion: conf_type {conf_type!r}; choose from {', '.join(CONF_TYPES)}")
    if len(boxes_list) != len(scores_list):
        raise KitError(f"box fusion: {len(boxes_list)} box sets but {len(scores_list)} score sets")
    if not 0.0 <= iou_thr <= 1.0:
        raise KitError(f"box fusion: iou_thr must be in [0, 1] (got {iou_thr})")
    w = check_weights(weights, len(boxes_list))
    boxes, scores, models = _prefilter(boxes_list, scores_list, w, skip_box_thr)
    # clusters, in creation order; Python floats: tiny per-image sets, exact IEEE float64
    fused: list[list[float]] = []       # current fused box per cluster [x1, y1, x2, y2]
    area: list[float] = []              # its area
    acc: list[list[float]] = []         # running sum of score * box
    conf: list[float] = []              # running sum of weighted scores
    best: list[float] = []              # max weighted score
    wsum: list[float] = []              # running sum of the boxes' model weights
    count: list[int] = []
    members: list[set[int]] = []        # models present
    for (x1, y1, x2, y2), s, m in zip(boxes.tolist(), scores.tolist(), models.tolist()):
        a = (x2 - x1) * (y2 - y1)
        index, top = -1, iou_thr
        for c, (u1, v1, u2, v2) in enumerate(fused):
            iw = (x2 if x2 < u2 else u2) - (x1 if x1 > u1 else u1)
            ih = (y2 if y2 < v2 else v2) - (y1 if y1 > v1 else v1)
            if iw <= 0.0 or ih <= 0.0:
                continue                      # IoU 0 never beats iou_thr >= 0
            inter = iw * ih
            iou = inter / (area[c] + a - inter)
            if iou > top:
                index, top = c, iou
        if index < 0:
            fused.append([x1, y1, x2, y2])
            area.append(a)
            acc.append([s * x1, s * y1, s * x2, s * y2])
            conf.append(s)
            best.append(s)
            wsum.append(float(w[m]))
            count.append(1)
            members.append({m})
            continue
        sums = acc[index]
        for k, v in enumerate((x1, y1, x2, y2)):
            sums[k] += s * v
        conf[index] += s
        best[index] = max(best[index], s)
        wsum[index] += float(w[m])
        count[index] += 1
        members[index].add(m)
        box = [v / conf[index] for v in sums]
        fused[index] = box
        area[index] = (box[2] - box[0]) * (box[3] - box[1])
    if not fused:
        return np.zeros((0, 4)), np.zeros(0)
    total = w.sum()
    out = np.empty(len(fused))
    for c, n in enumerate(count):
        mean = conf[c] / n
        if conf_type == "avg":
            out[c] = mean * min(len(w), n) / total
        elif conf_type == "max":
            out[c] = best[c] / w.max()
        else:   # box_and_model_avg
            present = w[np.array(sorted(members[c]))].sum()
            out[c] = mean * n / wsum[c] * present / total
    order = np.argsort(out)[::-1]
    return np.asarray(fused, np.float64)[order], out[order]


def fuse_raw(tables: Sequence[pd.DataFrame], weights: Sequence[float] | None = None,
             iou_thr: float = 0.55, conf_type: str = "avg") -> pd.DataFrame:
    """Fuse raw detection tables of several models, image by image (RAW_COLUMNS out).

    Each table: ``patientId, score, x, y, w, h`` (top-left, pixels of the 1024-px frame). An
    image absent from a table counts as that model finding nothing there. Images come out in
    order of first appearance (table 0 first), each image's fused boxes best first; fused
    scores are capped at 1 (unequal weights can push ``avg`` above it), boxes stay in the frame.
    """
    if not tables:
        raise KitError("box fusion: no tables to fuse")
    w = check_weights(weights, len(tables))
    side = float(paths.IMAGE_SIZE)
    grouped: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]] = []
    order: dict[str, None] = {}
    for t, table in enumerate(tables):
        missing = [c for c in RAW_COLUMNS if c not in table.columns]
        if missing:
            raise KitError(f"box fusion: table {t} lacks columns {missing}")
        pid = table["patientId"].astype(str).to_numpy()
        xywh = table[["x", "y", "w", "h"]].to_numpy(np.float64).reshape(-1, 4)
        corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) / side
        rows = pd.Series(np.arange(len(pid))).groupby(pid, sort=False).indices
        grouped.append((rows, corners, table["score"].to_numpy(np.float64)))
        order.update(dict.fromkeys(rows))
    none = np.zeros(0, np.int64)
    ids, parts_s, parts_b = [], [], []
    for p in order:
        picks = [rows.get(p, none) for rows, _, _ in grouped]
        boxes, scores = weighted_boxes_fusion(
            [c[r] for r, (_, c, _) in zip(picks, grouped)],
            [s[r] for r, (_, _, s) in zip(picks, grouped)],
            weights=w, iou_thr=iou_thr, conf_type=conf_type)
        ids += [p] * len(scores)
        parts_s.append(scores)
        parts_b.append(boxes)
    scores = np.minimum(np.concatenate(parts_s), 1.0) if parts_s else np.zeros(0)
    boxes = np.concatenate(parts_b) * side if parts_b else np.zeros((0, 4))
    return pd.DataFrame({"patientId": ids, "score": scores, "x": boxes[:, 0], "y": boxes[:, 1],
                         "w": boxes[:, 2] - boxes[:, 0], "h": boxes[:, 3] - boxes[:, 1]},
                        columns=RAW_COLUMNS)
