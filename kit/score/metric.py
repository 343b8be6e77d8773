"""The competition metric (mAP over IoU 0.40..0.75) and P/R/F1 tables; pure numpy.

Box format everywhere here: ``[x, y, w, h]`` float64, top-left corner, pixels of the original
1024-px image; continuous boxes (``x2 = x + w``, no +1).

Default semantics (DESIGN.md, "The metric", matching the public reference kernel):

* thresholds are the literals 0.40, 0.45, ..., 0.75 (``np.arange`` would give 0.6499999999999999);
* predictions are ranked by confidence, highest first; equal confidences: the later input first
  (``np.argsort(scores, kind="stable")[::-1]``);
* for each ground-truth box in file order, the first-ranked still-unmatched prediction with
  IoU >= t is its match; per threshold the image scores TP / (TP + FP + FN);
* image score = mean over thresholds; no GT and no prediction: excluded (``None``); no GT and
  any prediction: 0; GT and no prediction: 0; data-set score = mean over non-excluded images.

``strict=True`` follows the page's literal wording instead: a hit is IoU > t, and predictions,
in ranked order, each take their best (highest-IoU) still-unmatched ground truth.

Everything is computed in batches of images padded to (images, gt slots, prediction slots);
the per-prefix tables (:func:`prefix_image_scores`) are what kit.score.tune sweeps over, so the tuner
and this metric share one code path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from kit.errors import KitError

THRESHOLDS = np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75])
PRF_IOUS = (0.25, 0.5, 0.75)
BATCH_IMAGES = 2048   # images per padded batch (bounds memory for huge raw tables)

Preds = Mapping[str, tuple[np.ndarray, np.ndarray]]   # patientId -> (scores (n,), boxes (n,4))
Boxes = Mapping[str, np.ndarray]                      # patientId -> boxes (k,4)


@dataclass(frozen=True)
class Score:
    """Result of :func:`score_dataset`. ``map`` is NaN when every image was excluded."""

    map: float
    per_image: dict[str, float | None] = field(repr=False)   # None = excluded
    n_images: int                                            # images scored, excluded included
    n_excluded: int


def as_boxes(boxes: object) -> np.ndarray:
    """``boxes`` as a float64 (n, 4) array (an empty input gives shape (0, 4))."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4) [x, y, w, h], got {arr.shape}")
    return arr


def iou_matrix(a_xywh: np.ndarray, b_xywh: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n,4) with every box in ``b`` (m,4), both [x, y, w, h] -> (n, m).

    Continuous boxes; touching or disjoint boxes give exactly 0. Also accepts leading batch
    dimensions: (..., n, 4) and (..., m, 4) -> (..., n, m).
    """
    a = np.asarray(a_xywh, dtype=np.float64)[..., :, None, :]
    b = np.asarray(b_xywh, dtype=np.float64)[..., None, :, :]
    iw = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` highest first; equal scores: the later input first."""
    return np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")[::-1]


@dataclass(frozen=True)
class Batch:
    """Images padded to common sizes; predictions already in rank order.

    gt (N,K,4), gt_valid (N,K), boxes (N,P,4), scores (N,P) (-inf in padding), pred_valid (N,P).
    """

    gt: np.ndarray
    gt_valid: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    pred_valid: np.ndarray

    @property
    def n_gt(self) -> np.ndarray:
        return self.gt_valid.sum(axis=1)

    @property
    def n_pred(self) -> np.ndarray:
        return self.pred_valid.sum(axis=1)


def make_batch(gts: Sequence[np.ndarray], preds: Sequence[tuple[np.ndarray, np.ndarray]]) -> Batch:
    """Pad per-image ground truth (k,4) and (scores (n,), boxes (n,4)) into a :class:`Batch`.

    Ground truth keeps file order; predictions are ranked (:func:`rank_order`) per image.
    """
    n = len(gts)
    gt_len = np.fromiter((len(g) for g in gts), np.int64, n)
    pr_len = np.fromiter((len(s) for s, _ in preds), np.int64, n)
    k, p = max(int(gt_len.max(initial=0)), 1), max(int(pr_len.max(initial=0)), 1)
    gt, gt_valid = np.zeros((n, k, 4)), np.zeros((n, k), bool)
    img, slot = _slots(gt_len)
    gt[img, slot] = np.concatenate([as_boxes(g) for g in gts] + [np.zeros((0, 4))])
    gt_valid[img, slot] = True
    scores = np.concatenate([np.asarray(s, np.float64).ravel() for s, _ in preds] + [np.zeros(0)])
    flat = np.concatenate([as_boxes(b) for _, b in preds] + [np.zeros((0, 4))])
    img, slot = _slots(pr_len)
    # by image, then score descending, then later input first: rank_order within each image
    order = np.lexsort((-np.arange(len(scores)), -scores, img))
    boxes, pred_valid = np.zeros((n, p, 4)), np.zeros((n, p), bool)
    ranked = np.full((n, p), -np.inf)
    boxes[img, slot], ranked[img, slot], pred_valid[img, slot] = flat[order], scores[order], True
    return Batch(gt, gt_valid, boxes, ranked, pred_valid)


def _slots(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image index, slot within the image) of every item of images holding ``lengths`` items."""
    img = np.repeat(np.arange(len(lengths)), lengths)
    return img, np.arange(len(img)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def match_predictions(batch: Batch, thresholds: np.ndarray = THRESHOLDS, *,
                      strict: bool = False, by_prediction: bool | None = None) -> np.ndarray:
    """Which ranked predictions are true positives: bool (N, T, P).

    Default: ground truth in file order takes the first-ranked unmatched prediction with
    IoU >= t. ``strict``: hit is IoU > t. ``by_prediction`` (default: ``strict``): predictions in
    rank order take their highest-IoU unmatched ground truth (first one on equal IoU).
    Matching a prefix of the ranking gives the prefix of this result (what kit.score.tune relies on).
    """
    by_prediction = strict if by_prediction is None else by_prediction
    iou = iou_matrix(batch.gt, batch.boxes)                              # (N, K, P)
    t = np.asarray(thresholds, dtype=np.float64)[None, :, None, None]
    hit = (iou[:, None] > t) if strict else (iou[:, None] >= t)          # (N, T, K, P)
    hit &= batch.gt_valid[:, None, :, None] & batch.pred_valid[:, None, None, :]
    n, n_t, n_k, n_p = hit.shape
    rows = np.arange(n)[:, None], np.arange(n_t)[None, :]
    if not by_prediction:
        used = np.zeros((n, n_t, n_p), bool)
        for k in range(n_k):
            free = hit[:, :, k, :] & ~used
            first = free.argmax(axis=-1)
            used[rows[0], rows[1], first] |= free.any(axis=-1)
        return used
    matched = np.zeros((n, n_t, n_p), bool)
    taken = np.zeros((n, n_t, n_k), bool)
    ious = np.broadcast_to(iou[:, None], hit.shape)
    for j in range(n_p):
        cand = np.where(hit[..., j] & ~taken, ious[..., j], -1.0)           # (N, T, K)
        best = cand.argmax(axis=-1)
        ok = np.take_along_axis(cand, best[..., None], -1)[..., 0] >= 0
        taken[rows[0], rows[1], best] |= ok
        matched[..., j] = ok
    return matched


def prefix_image_scores(matched: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """Image score when only the first L ranked predictions are kept: float (N, P+1), L=0..P.

    NaN marks an excluded image (no GT, no prediction kept).
    """
    n, _, n_p = matched.shape
    tp = np.concatenate([np.zeros(matched.shape[:2] + (1,)), np.cumsum(matched, axis=-1)], -1)
    kept = np.arange(n_p + 1)[None, None, :]
    denom = kept + n_gt[:, None, None] - tp                           # TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        per_t = np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)
    return per_t.mean(axis=1)


def _check_ids(gt: Boxes, preds: Preds) -> None:
    extra = [pid for pid in preds if pid not in gt]
    if extra:
        raise KitError(f"{len(extra)} predicted patientIds have no ground truth (first: "
                       f"{extra[0]!r}); score against the labels that cover them")


def _batches(gt: Boxes, preds: Preds, ids: list[str]):
    """(ids, Batch) per block of BATCH_IMAGES images; ids without predictions get none."""
    empty = (np.zeros(0), np.zeros((0, 4)))
    for start in range(0, len(ids), BATCH_IMAGES):
        chunk = ids[start:start + BATCH_IMAGES]
        yield chunk, make_batch([gt[pid] for pid in chunk], [preds.get(pid, empty) for pid in chunk])


def score_dataset(gt: Boxes, preds: Preds, strict: bool = False) -> Score:
    """Competition mAP of ``preds`` over every image of ``gt``.

    Images of ``gt`` missing from ``preds`` count as "no prediction"; predictions for an id
    not in ``gt`` raise :class:`KitError`.
    """
    _check_ids(gt, preds)
    per_image: dict[str, float | None] = {}
    for chunk, batch in _batches(gt, preds, list(gt)):
        table = prefix_image_scores(match_predictions(batch, strict=strict), batch.n_gt)
        scores = table[np.arange(len(chunk)), batch.n_pred]
        per_image.update((pid, None if np.isnan(v) else float(v)) for pid, v in zip(chunk, scores))
    kept = [v for v in per_image.values() if v is not None]
    return Score(float(np.mean(kept)) if kept else float("nan"), per_image,
                 len(per_image), len(per_image) - len(kept))


def image_score(gt: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                strict: bool = False) -> float | None:
    """Score of one image (None = excluded); gt (k,4), scores (n,), boxes (n,4) [x, y, w, h]."""
    return score_dataset({"image": gt}, {"image": (scores, boxes)}, strict=strict).per_image["image"]


def prf_table(gt: Boxes, preds: Preds, ious: Sequence[float] = PRF_IOUS) -> dict[float, dict]:
    """Detection counts over the whole data set at each IoU: {iou: {tp, fp, fn, precision, recall, f1}}.

    Greedy one-to-one matching: predictions by descending confidence each take their
    highest-IoU unmatched ground truth with IoU >= iou. A ratio with a zero denominator is 0.0.
    """
    _check_ids(gt, preds)
    thr = np.asarray(ious, dtype=np.float64)
    tp = np.zeros(len(thr), np.int64)
    n_pred = n_gt = 0
    for _, batch in _batches(gt, preds, list(gt)):
        tp += match_predictions(batch, thr, by_prediction=True).sum(axis=(0, 2))
        n_pred += int(batch.n_pred.sum())
        n_gt += int(batch.n_gt.sum())
    out = {}
    for t, hits in zip(ious, tp.tolist()):
        fp, fn = n_pred - hits, n_gt - hits
        p = hits / (hits + fp) if hits + fp else 0.0
        r = hits / (hits + fn) if hits + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[float(t)] = {"tp": hits, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f1}
    return out


# ---- image-level ranking: ROC of P(opacity) against "the image has a box" ----------------
def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC of ``scores`` (higher = more positive) against bool ``positive``: (fpr, tpr), from
    (0, 0) to (1, 1), one point per distinct score taken as the threshold, highest first
    (tied scores move both rates at once: a diagonal step). ValueError unless both classes occur.
    """
    positive, scores = _two_classes(positive, scores)
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]      # last row of each score
    tp, fp = np.cumsum(pos)[ends], np.cumsum(~pos)[ends]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC: the Mann-Whitney statistic U / (n_pos n_neg), the chance that a
    random positive scores above a random negative, ties counting one half. Computed from the
    mid-ranks of ``scores`` (exact: ranks are halves of integers). ValueError unless both
    classes occur."""
    positive, scores = _two_classes(positive, scores)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    midrank = np.cumsum(counts) - (counts - 1) / 2.0          # 1-based mean rank of each value
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    u = midrank[inverse][positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _two_classes(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positive = np.asarray(positive, bool).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(positive) != len(scores) or not np.isfinite(scores).all():
        raise ValueError("ROC needs one finite score per label")
    if positive.all() or not positive.any():
        raise ValueError(f"ROC needs positive and negative images (got {int(positive.sum())} "
                         f"positive of {len(positive)})")
    return positive, scores
