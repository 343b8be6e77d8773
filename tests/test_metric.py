"""Hand-checked cases of the competition metric, plus a property test against a plain loop."""
from __future__ import annotations

import numpy as np
import pytest

from kit.score import metric
from kit.errors import KitError

E = np.zeros((0, 4))
UNIT = [[0.0, 0.0, 100.0, 100.0]]


def score(gt, scores, boxes, strict=False):
    return metric.image_score(np.array(gt, float).reshape(-1, 4), np.array(scores, float),
                              np.array(boxes, float).reshape(-1, 4), strict=strict)


def test_thresholds_are_the_literals():
    assert metric.THRESHOLDS.tolist() == [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]


def test_iou_matrix_exact_values():
    a = np.array([[0, 0, 100, 100], [10, 10, 10, 10]], float)
    b = np.array([[0, 0, 100, 50], [100, 0, 50, 50], [50, 50, 100, 100]], float)
    got = metric.iou_matrix(a, b)
    assert got.shape == (2, 3)
    assert got[0, 0] == 0.5                      # 5000 / 10000
    assert got[0, 1] == 0.0                      # touching edge: continuous boxes, no +1
    assert got[0, 2] == 2500 / 17500
    assert got[1, 0] == 100 / 5000
    assert got[1, 2] == 0.0


def test_empty_gt_and_no_prediction_is_excluded():
    assert score(E, [], E) is None


def test_empty_gt_with_a_prediction_scores_zero():
    assert score(E, [0.9], UNIT) == 0.0


def test_gt_without_prediction_scores_zero():
    assert score(UNIT, [], E) == 0.0


def test_perfect_match_scores_one():
    gt = [[10, 20, 30, 40], [500, 500, 100, 200]]
    assert score(gt, [0.3, 0.8], gt[::-1]) == 1.0


def test_iou_exactly_half_counts_up_to_050():
    # IoU = 5000/10000 = 0.5: hit at 0.40, 0.45, 0.50; miss (FP+FN = 0/2) from 0.55 on
    assert score(UNIT, [0.9], [[0, 0, 100, 50]]) == 3 / 8


def test_iou_exactly_065_counts_at_065_and_not_strictly():
    pred = [[0, 0, 100, 65]]                     # IoU = 6500/10000 == 0.65 exactly
    assert score(UNIT, [0.9], pred) == 6 / 8
    # strict: IoU > t; with np.arange's 0.6499999999999999 it would wrongly count at 0.65 too
    assert score(UNIT, [0.9], pred, strict=True) == 5 / 8


def test_iou_just_below_065_does_not_count_at_065():
    below = float(np.nextafter(0.65, 0.0))       # == np.arange(0.4, 0.76, 0.05)[5]
    assert score([[0, 0, 1, 1]], [0.9], [[0, 0, 1, below]]) == 5 / 8


def test_duplicate_predictions_give_one_tp_one_fp():
    assert score(UNIT, [0.9, 0.8], UNIT + UNIT) == 0.5


def test_confidence_order_decides_which_prediction_matches():
    # GT a=[0,0,100,100], b=[0,0,100,80] (file order a, b).
    # p=[0,0,100,90]: IoU 0.9 with a, 8000/9000 with b (hits both at every threshold).
    # q=[0,20,100,80]: IoU 0.8 with a, 6000/10000 = 0.6 with b (hits b only at t <= 0.60).
    gt = [[0, 0, 100, 100], [0, 0, 100, 80]]
    p, q = [0, 0, 100, 90], [0, 20, 100, 80]
    # q ranked first: a takes q, b takes p -> perfect.
    assert score(gt, [0.1, 0.9], [p, q]) == 1.0
    # p ranked first: a takes p; b takes q at 0.40..0.60 (5 thresholds: 1.0), else
    # TP=1, FP=1, FN=1 (3 thresholds: 1/3) -> (5 + 1) / 8.
    assert score(gt, [0.9, 0.1], [p, q]) == pytest.approx(6 / 8, abs=1e-15)


def test_equal_confidences_later_input_first():
    gt = [[0, 0, 100, 100], [0, 0, 100, 80]]
    p, q = [0, 0, 100, 90], [0, 20, 100, 80]     # the boxes of the test above
    assert score(gt, [0.5, 0.5], [p, q]) == 1.0  # q is later: ranked first
    assert score(gt, [0.5, 0.5], [q, p]) == pytest.approx(6 / 8, abs=1e-15)


def test_touching_boxes_do_not_match():
    assert score(UNIT, [0.9], [[100, 0, 100, 100]]) == 0.0


def test_strict_mode_differs_on_a_crafted_case():
    # g0=[0,0,100,100], g1=[10,0,100,100].
    # p=[8,0,100,100] (conf 0.9): IoU 92/108 with g0, 98/102 with g1 (its best).
    # q=[20,0,100,100] (conf 0.8): IoU 80/120 = 0.667 with g0, 90/110 = 0.818 with g1.
    gt = [[0, 0, 100, 100], [10, 0, 100, 100]]
    boxes = [[8, 0, 100, 100], [20, 0, 100, 100]]
    # default: g0 takes p, g1 takes q at every threshold.
    assert score(gt, [0.9, 0.8], boxes) == 1.0
    # strict: p takes g1; q takes g0 only while 0.667 > t (0.40..0.65: 6 thresholds), else
    # TP=1, FP=1, FN=1 = 1/3 (0.70, 0.75) -> (6 + 2/3) / 8.
    assert score(gt, [0.9, 0.8], boxes, strict=True) == pytest.approx((6 + 2 / 3) / 8, abs=1e-15)


def test_score_dataset_means_over_non_excluded_images():
    gt = {"a": np.array(UNIT, float), "b": E, "c": E, "d": np.array(UNIT, float)}
    preds = {"a": (np.array([1.0]), np.array(UNIT, float)),
             "c": (np.array([0.3]), np.array(UNIT, float))}
    s = metric.score_dataset(gt, preds)
    assert s.per_image == {"a": 1.0, "b": None, "c": 0.0, "d": 0.0}
    assert (s.n_images, s.n_excluded) == (4, 1)
    assert s.map == 1 / 3


def test_predictions_for_unknown_ids_are_an_error():
    with pytest.raises(KitError, match="no ground truth"):
        metric.score_dataset({"a": E}, {"zzz": (np.array([1.0]), np.array(UNIT, float))})


def test_all_excluded_gives_nan():
    s = metric.score_dataset({"a": E}, {})
    assert np.isnan(s.map) and s.n_excluded == 1


def test_prf_table_counts():
    gt = {"a": np.array([[0, 0, 100, 100], [300, 300, 100, 100]], float), "b": E}
    preds = {"a": (np.array([0.9, 0.8]), np.array([[0, 0, 100, 50], [300, 300, 100, 100]], float)),
             "b": (np.array([0.7]), np.array(UNIT, float))}
    t = metric.prf_table(gt, preds, ious=(0.25, 0.5, 0.75))
    assert t[0.25] == t[0.5]
    assert (t[0.5]["tp"], t[0.5]["fp"], t[0.5]["fn"]) == (2, 1, 0)
    assert t[0.5]["precision"] == 2 / 3 and t[0.5]["recall"] == 1.0
    assert t[0.5]["f1"] == pytest.approx(0.8)
    assert (t[0.75]["tp"], t[0.75]["fp"], t[0.75]["fn"]) == (1, 2, 1)
    assert metric.prf_table({"a": E}, {})[0.5] == {"tp": 0, "fp": 0, "fn": 0, "precision": 0.0,
                                                   "recall": 0.0, "f1": 0.0}


# ----- property test: a plain per-image Python loop written from DESIGN.md ----------------

def _iou(a, b):
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def reference_image_score(gt, scores, boxes, strict=False):
    if len(gt) == 0 and len(boxes) == 0:
        return None
    order = np.argsort(scores, kind="stable")[::-1]
    boxes = [boxes[i] for i in order]
    total = 0.0
    for t in [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]:
        tp = 0
        if not strict:
            used = set()
            for g in gt:
                for j, b in enumerate(boxes):
                    if j not in used and _iou(g, b) >= t:
                        used.add(j)
                        tp += 1
                        break
        else:
            taken = set()
            for b in boxes:
                best, best_iou = None, -1.0
                for i, g in enumerate(gt):
                    v = _iou(g, b)
                    if i not in taken and v > t and v > best_iou:
                        best, best_iou = i, v
                if best is not None:
                    taken.add(best)
                    tp += 1
        total += tp / (len(boxes) + len(gt) - tp)
    return total / 8


@pytest.mark.parametrize("strict", [False, True])
def test_random_images_match_a_plain_loop(strict):
    rng = np.random.default_rng(7)
    gt, preds = {}, {}
    for i in range(300):
        k, n = rng.integers(0, 4), rng.integers(0, 7)
        g = np.column_stack([rng.integers(0, 800, (k, 2)), rng.integers(40, 300, (k, 2))]) * 1.0
        # predictions near GT boxes (so IoUs land around the thresholds) or anywhere
        src = g[rng.integers(0, k, n)] if k else rng.integers(0, 800, (n, 4)) * 1.0
        b = np.abs(src + rng.normal(0, 15, (n, 4))) + [0, 0, 1, 1]
        s = rng.choice([0.2, 0.5, 0.9], n)          # few distinct values: ties are common
        gt[f"p{i}"] = g
        if n or rng.random() < 0.5:
            preds[f"p{i}"] = (s, b)
    got = metric.score_dataset(gt, preds, strict=strict)
    empty = (np.zeros(0), np.zeros((0, 4)))
    for pid, g in gt.items():
        s, b = preds.get(pid, empty)
        assert got.per_image[pid] == reference_image_score(list(g), s, list(b), strict), pid
    assert got.n_excluded > 0 and 0 < got.map < 1
