import warnings

import numpy as np
import pandas as pd
import pytest

from kit.errors import KitError
from kit.infer.fusion import fuse_raw, weighted_boxes_fusion
from kit.runs import RAW_COLUMNS


def wbf(boxes, scores, **kw):
    return weighted_boxes_fusion([np.array(b, float).reshape(-1, 4) for b in boxes],
                                 [np.array(s, float) for s in scores], **kw)


def test_two_models_one_object_give_the_score_weighted_mean_box():
    # IoU 0.16 / 0.2 = 0.8 > 0.55: one cluster
    boxes, scores = wbf([[[0.1, 0.1, 0.5, 0.5]], [[0.1, 0.1, 0.5, 0.6]]], [[0.9], [0.6]])
    assert boxes.shape == (1, 4) and boxes.dtype == np.float64
    np.testing.assert_allclose(boxes, [[0.1, 0.1, 0.5, (0.9 * 0.5 + 0.6 * 0.6) / 1.5]], atol=1e-15)
    np.testing.assert_allclose(scores, [0.75], atol=1e-15)       # (0.9 + 0.6) / 2 models


def test_a_box_only_one_model_found_is_averaged_over_all_models():
    boxes, scores = wbf([[[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]], [[0.6, 0.6, 0.9, 0.95]]],
                        [[0.8, 0.5], [0.7]])
    # cluster 1: [0.6..] from both (score (0.5 + 0.7) / 2); cluster 0: model 0 alone (0.8 / 2)
    np.testing.assert_allclose(scores, [0.6, 0.4], atol=1e-15)
    np.testing.assert_allclose(boxes[0], [0.6, 0.6, 0.9, (0.5 * 0.9 + 0.7 * 0.95) / 1.2],
                               atol=1e-15)
    np.testing.assert_allclose(boxes[1], [0.1, 0.1, 0.3, 0.3], atol=1e-15)


def test_one_model_keeps_separate_boxes_best_first():
    boxes, scores = wbf([[[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.9]]], [[0.3, 0.8]])
    np.testing.assert_array_equal(scores, [0.8, 0.3])
    np.testing.assert_array_equal(boxes, [[0.5, 0.5, 0.7, 0.9], [0.0, 0.0, 0.2, 0.2]])


def test_matching_is_against_the_fused_box_and_strictly_above_iou_thr():
    a, b, c = [0, 0, 0.4, 0.4], [0, 0, 0.4, 0.6], [0, 0.1, 0.4, 0.6]
    # c overlaps a by IoU 0.5 only, but the fused a+b box [0, 0, 0.4, 0.5] by 2/3
    boxes, scores = wbf([[a], [b], [c]], [[1.0], [1.0], [0.5]])
    np.testing.assert_allclose(boxes, [[0, 0.02, 0.4, 0.52]], atol=1e-15)
    np.testing.assert_allclose(scores, [2.5 / 3], atol=1e-15)
    # IoU exactly 0.5 (0.25 / 0.5): not a match at iou_thr 0.5, a match below it
    pair = [[[0, 0, 0.5, 0.5]], [[0, 0, 0.5, 1.0]]]
    assert len(wbf(pair, [[0.9], [0.8]], iou_thr=0.5)[0]) == 2
    assert len(wbf(pair, [[0.9], [0.8]], iou_thr=0.49)[0]) == 1


def test_weights_scale_the_mean_box_and_the_score():
    boxes, scores = wbf([[[0.1, 0.1, 0.5, 0.5]], [[0.1, 0.1, 0.5, 0.6]]], [[0.9], [0.6]],
                        weights=[3, 1])
    np.testing.assert_allclose(boxes[0, 3], (2.7 * 0.5 + 0.6 * 0.6) / 3.3, atol=1e-15)
    np.testing.assert_allclose(scores, [(2.7 + 0.6) / 2 * 2 / 4], atol=1e-15)


def test_conf_types_on_two_boxes_of_one_model_with_the_other_model_absent():
    two = [[[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.55]], np.zeros((0, 4))]
    s = [[0.8, 0.6], []]
    assert wbf(two, s)[1] == pytest.approx([0.7], abs=1e-15)                # mean * 2 / 2
    assert wbf(two, s, conf_type="max")[1] == pytest.approx([0.8], abs=1e-15)
    assert wbf(two, s, conf_type="box_and_model_avg")[1] == pytest.approx([0.35], abs=1e-15)
    with pytest.raises(KitError, match="conf_type"):
        wbf(two, s, conf_type="median")


def test_skip_box_thr_drops_low_scores_before_fusing():
    boxes, scores = wbf([[[0.1, 0.1, 0.5, 0.5]], [[0.1, 0.1, 0.5, 0.6]]], [[0.9], [0.05]],
                        skip_box_thr=0.1)
    np.testing.assert_array_equal(boxes, [[0.1, 0.1, 0.5, 0.5]])
    np.testing.assert_allclose(scores, [0.45], atol=1e-15)


def test_empty_inputs_reversed_corners_clipping_and_zero_area():
    for boxes_list, scores_list in [([], []), ([np.zeros((0, 4))], [np.zeros(0)]),
                                    ([[[0.2, 0.2, 0.2, 0.5]]], [[0.9]])]:   # zero area
        boxes, scores = wbf(boxes_list, scores_list)
        assert boxes.shape == (0, 4) and scores.shape == (0,)
    boxes, _ = wbf([[[0.5, 0.6, -0.2, 1.3]]], [[0.9]])
    np.testing.assert_array_equal(boxes, [[0.0, 0.6, 0.5, 1.0]])


def test_bad_arguments_are_kit_errors():
    with pytest.raises(KitError, match="weights"):
        wbf([[[0, 0, 1, 1]]], [[0.5]], weights=[1, 1])
    with pytest.raises(KitError, match="> 0"):
        wbf([[[0, 0, 1, 1]]], [[0.5]], weights=[0])
    with pytest.raises(KitError, match="iou_thr"):
        wbf([[[0, 0, 1, 1]]], [[0.5]], iou_thr=1.5)
    with pytest.raises(KitError, match="2 boxes but 1 scores"):
        wbf([[[0, 0, 1, 1], [0, 0, 1, 1]]], [[0.5]])


# ---- against the reference implementation -------------------------------------------------
class _Float64Numpy:
    """numpy, except that ``zeros`` ignores a float32 dtype: the reference in float64."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def zeros(shape, dtype=None):
        return np.zeros(shape, np.float64)


def random_case(rng, ties=True):
    """A few objects, each seen by some models with jittered boxes; some boxes leave [0, 1];
    with ``ties`` some models give only the scores 0.3, 0.5 and 0.9."""
    n_models = int(rng.integers(1, 5))
    centers = rng.uniform(0.1, 0.9, (int(rng.integers(1, 5)), 2))
    sizes = rng.uniform(0.05, 0.4, (len(centers), 2))
    boxes, scores = [], []
    for _ in range(n_models):
        k = int(rng.integers(0, 12))
        obj = rng.integers(0, len(centers), k)
        c = centers[obj] + rng.normal(0, 0.03, (k, 2))
        half = sizes[obj] * rng.uniform(0.7, 1.3, (k, 2)) / 2
        b = np.concatenate([c - half, c + half], axis=1)
        if rng.random() < 0.2:
            b = b * 1.3 - 0.1                                   # some corners outside [0, 1]
        boxes.append(b)
        tied = ties and rng.random() < 0.5
        scores.append(rng.choice([0.3, 0.5, 0.9], k) if tied else rng.uniform(0, 1, k))
    weights = None if rng.random() < 0.5 else rng.uniform(0.5, 3, n_models).tolist()
    kw = dict(weights=weights, iou_thr=float(rng.uniform(0.3, 0.7)),
              skip_box_thr=float(rng.choice([0.0, 0.2])),
              conf_type=str(rng.choice(["avg", "max", "box_and_model_avg"])))
    return boxes, scores, kw


def _reference(boxes, scores, kw):
    from ensemble_boxes import weighted_boxes_fusion as reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b, s, _ = reference([x.tolist() for x in boxes], [x.tolist() for x in scores],
                            [[0] * len(x) for x in scores], **kw)
    return np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64)


def test_equals_the_reference_run_in_float64(monkeypatch):
    """Same boxes, scores and order as ensemble_boxes (its float32 accumulator made float64)."""
    wbf_module = pytest.importorskip("ensemble_boxes.ensemble_boxes_wbf")
    monkeypatch.setattr(wbf_module, "np", _Float64Numpy())
    rng = np.random.default_rng(2018)
    fused = 0
    for case in range(400):
        boxes, scores, kw = random_case(rng)
        want_b, want_s = _reference(boxes, scores, kw)
        got_b, got_s = weighted_boxes_fusion(boxes, scores, **kw)
        assert got_b.shape == want_b.shape, (case, kw)
        np.testing.assert_allclose(got_b, want_b, rtol=0, atol=1e-9, err_msg=f"case {case} {kw}")
        np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-9, err_msg=f"case {case} {kw}")
        fused += sum(len(b) for b in boxes) - len(got_b)
    assert fused > 500                       # the cases really merged boxes


def test_equals_the_stock_reference_to_float32_precision():
    """Without score ties: float32 rounding may swap tied clusters in the reference's order."""
    pytest.importorskip("ensemble_boxes")
    rng = np.random.default_rng(7)
    for case in range(200):
        boxes, scores, kw = random_case(rng, ties=False)
        want_b, want_s = _reference(boxes, scores, kw)
        got_b, got_s = weighted_boxes_fusion(boxes, scores, **kw)
        assert got_b.shape == want_b.shape, case
        np.testing.assert_allclose(got_b, want_b, rtol=0, atol=1e-6, err_msg=f"case {case}")
        np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6, err_msg=f"case {case}")


# ---- raw tables ----------------------------------------------------------------------------
def raw(rows):
    return pd.DataFrame(rows, columns=RAW_COLUMNS)


def test_fuse_raw_per_image_with_absent_images_as_no_detection():
    t0 = raw([("a", 0.9, 102.4, 102.4, 409.6, 409.6), ("c", 0.8, 0.0, 0.0, 512.0, 512.0)])
    t1 = raw([("b", 0.6, 10.0, 20.0, 30.0, 40.0), ("a", 0.6, 102.4, 102.4, 409.6, 512.0)])
    out = fuse_raw([t0, t1])
    assert list(out.columns) == RAW_COLUMNS and list(out["patientId"]) == ["a", "c", "b"]
    want, _ = wbf([[[0.1, 0.1, 0.5, 0.5]], [[0.1, 0.1, 0.5, 0.6]]], [[0.9], [0.6]])
    x1, y1, x2, y2 = want[0] * 1024
    np.testing.assert_allclose(out.iloc[0, 1:].to_numpy(float),
                               [0.75, x1, y1, x2 - x1, y2 - y1], atol=1e-9)
    np.testing.assert_allclose(out.iloc[1, 1:].to_numpy(float), [0.4, 0, 0, 512, 512], atol=1e-9)
    np.testing.assert_allclose(out.iloc[2, 1:].to_numpy(float), [0.3, 10, 20, 30, 40], atol=1e-9)


def test_fuse_raw_caps_scores_at_one_and_handles_empty_tables():
    # two overlapping boxes of the weight-3 model: mean 3 * 2 / 4 = 1.5 -> 1
    t0 = raw([("a", 1.0, 100, 100, 400, 400), ("a", 1.0, 100, 100, 400, 420)])
    out = fuse_raw([t0, raw([])], weights=[3, 1])
    assert len(out) == 1 and out["score"].iloc[0] == 1.0
    empty = fuse_raw([raw([]), raw([])])
    assert list(empty.columns) == RAW_COLUMNS and len(empty) == 0
    with pytest.raises(KitError, match="lacks columns"):
        fuse_raw([t0.drop(columns="score")])
    with pytest.raises(KitError, match="no tables"):
        fuse_raw([])
