"""The five Mask R-CNN losses against plain numpy versions, 0 for perfect predictions, never NaN."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from kit.mrcnn import losses as L  # noqa: E402

RNG = np.random.default_rng(0)


def _np_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


def _np_smooth_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d * d, d - 0.5)


def _rpn_case():
    match = np.zeros((2, 12, 1), np.int32)
    match[0, [1, 5, 7], 0] = 1
    match[0, [0, 2, 3], 0] = -1
    match[1, [4, 9, 10, 11], 0] = -1
    match[1, 6, 0] = 1
    logits = RNG.normal(size=(2, 12, 2)).astype(np.float32)
    pred = RNG.normal(size=(2, 12, 4)).astype(np.float32) * 2
    target = np.zeros((2, 4, 4), np.float32)
    target[0, :3] = RNG.normal(size=(3, 4))
    target[1, :1] = RNG.normal(size=(1, 4))
    return match, logits, pred, target


def test_smooth_l1_by_hand():
    out = L.smooth_l1(tf.constant([0.0, 0.0, 0.0]), tf.constant([0.5, -2.0, 1.0])).numpy()
    np.testing.assert_allclose(out, [0.125, 1.5, 0.5])


def test_rpn_class_loss_matches_numpy():
    match, logits, _, _ = _rpn_case()
    m = match[..., 0]
    used = m != 0
    want = _np_ce(logits[used], (m[used] == 1).astype(int)).mean()
    got = L.RpnClassLoss(name="rpn_class_loss")([tf.constant(match), tf.constant(logits)])
    assert got.shape == ()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_rpn_bbox_loss_pairs_kth_positive_with_kth_target():
    match, _, pred, target = _rpn_case()
    rows = [pred[0, [1, 5, 7]], pred[1, [6]]]
    want = np.concatenate([_np_smooth_l1(target[0, :3], rows[0]),
                           _np_smooth_l1(target[1, :1], rows[1])]).mean()
    got = L.RpnBboxLoss(name="rpn_bbox_loss")([target, match, pred]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_rpn_losses_zero_for_perfect_predictions():
    match, _, pred, target = _rpn_case()
    perfect = np.zeros_like(pred)
    perfect[0, [1, 5, 7]] = target[0, :3]
    perfect[1, 6] = target[1, 0]
    assert L.rpn_bbox_loss_graph(target, match, perfect).numpy() == 0.0
    logits = np.where(match == 1, [[-50.0, 50.0]], [[50.0, -50.0]]).astype(np.float32)
    assert L.rpn_class_loss_graph(match, logits).numpy() == pytest.approx(0.0, abs=1e-12)


def test_rpn_losses_with_no_positive_or_no_anchor():
    match, logits, pred, target = _rpn_case()
    negative = np.where(match == 1, -1, match)
    assert L.rpn_bbox_loss_graph(np.zeros_like(target), negative, pred).numpy() == 0.0
    neutral = np.zeros_like(match)
    assert L.rpn_class_loss_graph(neutral, logits).numpy() == 0.0
    # all-negative batch: class loss finite and positive, bbox loss exactly 0
    value = L.rpn_class_loss_graph(negative, logits).numpy()
    assert np.isfinite(value) and value > 0


def _head_case(num_classes=3):
    ids = np.array([[2, 1, 0, 0], [0, 1, 0, 0]], np.int32)
    logits = RNG.normal(size=(2, 4, num_classes)).astype(np.float32)
    tbox = RNG.normal(size=(2, 4, 4)).astype(np.float32)
    pbox = RNG.normal(size=(2, 4, num_classes, 4)).astype(np.float32)
    tmask = (RNG.random((2, 4, 6, 6)) > 0.5).astype(np.float32)
    pmask = RNG.uniform(0.05, 0.95, size=(2, 4, 6, 6, num_classes)).astype(np.float32)
    return ids, logits, tbox, pbox, tmask, pmask


def test_mrcnn_class_loss_matches_numpy_and_skips_inactive_predictions():
    ids, logits, *_ = _head_case()
    active = np.array([[1, 1, 0], [1, 1, 0]], np.float32)
    ce = _np_ce(logits, ids)
    weight = active[0][logits.argmax(-1)]
    want = (ce * weight).sum() / weight.sum()
    got = L.MrcnnClassLoss(name="mrcnn_class_loss")([ids, logits, active]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    perfect = np.where(np.eye(3, dtype=bool)[ids], 60.0, -60.0).astype(np.float32)
    assert L.mrcnn_class_loss_graph(ids, perfect, np.ones_like(active)).numpy() == pytest.approx(0)
    none_active = np.zeros_like(active)
    assert L.mrcnn_class_loss_graph(ids, logits, none_active).numpy() == 0.0


def test_mrcnn_bbox_loss_matches_numpy():
    ids, _, tbox, pbox, _, _ = _head_case()
    pos = [(0, 0), (0, 1), (1, 1)]
    want = np.concatenate([_np_smooth_l1(tbox[b, r], pbox[b, r, ids[b, r]]) for b, r in pos]).mean()
    got = L.MrcnnBboxLoss(name="mrcnn_bbox_loss")([tbox, ids, pbox]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    perfect = pbox.copy()
    for b, r in pos:
        perfect[b, r, ids[b, r]] = tbox[b, r]
    assert L.mrcnn_bbox_loss_graph(tbox, ids, perfect).numpy() == 0.0


def test_mrcnn_mask_loss_matches_numpy():
    ids, _, _, _, tmask, pmask = _head_case()
    pos = [(0, 0), (0, 1), (1, 1)]
    terms = []
    for b, r in pos:
        p, t = pmask[b, r, :, :, ids[b, r]], tmask[b, r]
        terms.append(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    want = np.concatenate(terms).mean()
    got = L.MrcnnMaskLoss(name="mrcnn_mask_loss")([tmask, ids, pmask]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    perfect = pmask.copy()
    for b, r in pos:
        perfect[b, r, :, :, ids[b, r]] = tmask[b, r]
    assert L.mrcnn_mask_loss_graph(tmask, ids, perfect).numpy() < 1e-6


def test_head_losses_are_zero_not_nan_without_positive_rois():
    ids, logits, tbox, pbox, tmask, pmask = _head_case()
    ids = np.zeros_like(ids)
    assert L.mrcnn_bbox_loss_graph(tbox, ids, pbox).numpy() == 0.0
    assert L.mrcnn_mask_loss_graph(tmask, ids, pmask).numpy() == 0.0
    # and their gradients are finite (zeros), so a step on an empty image cannot make NaN weights
    p = tf.Variable(pbox)
    with tf.GradientTape() as tape:
        loss = L.mrcnn_bbox_loss_graph(tbox, ids, p)
    grad = tf.convert_to_tensor(tape.gradient(loss, p))
    assert np.all(grad.numpy() == 0)


def test_loss_layers_in_a_functional_graph_compute_in_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        match = keras.Input((12, 1), dtype="int32")
        logits = keras.Input((12, 2), dtype="float16")
        out = L.RpnClassLoss(name="rpn_class_loss")([match, logits])
        model = keras.Model([match, logits], out)
    finally:
        keras.config.set_dtype_policy(previous)
    m, lg, _, _ = _rpn_case()
    value = model([m, lg.astype(np.float16)])
    assert value.dtype == tf.float32 and value.shape == ()
    np.testing.assert_allclose(value.numpy(), L.rpn_class_loss_graph(m, lg).numpy(), rtol=2e-3)
    assert L.LOSS_NAMES == ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
                            "mrcnn_bbox_loss", "mrcnn_mask_loss")


def test_mask_loss_on_positive_rows_equals_the_batched_loss():
    """The training graph feeds the mask loss only positive rows (plus a class-0 row when there
    is none): it must equal Matterport's batched mask loss over all sampled ROIs."""
    rng = np.random.default_rng(3)
    ids = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.int32)
    target = (rng.random((2, 4, 6, 6)) > 0.5).astype(np.float32)
    pred = rng.uniform(0.05, 0.95, (2, 4, 6, 6, 2)).astype(np.float32)
    batched = float(L.MrcnnMaskLoss()([target, ids, pred]))
    pos = ids.reshape(-1) > 0
    rows = float(L.MrcnnMaskLossRows()([target.reshape(8, 6, 6)[pos], ids.reshape(-1)[pos],
                                        pred.reshape(8, 6, 6, 2)[pos]]))
    assert rows == pytest.approx(batched, rel=1e-6)
    dummy = float(L.MrcnnMaskLossRows()([target[0, :1], np.zeros(1, np.int32), pred[0, :1]]))
    assert dummy == 0.0


def test_image_class_loss_skips_unknown_images_and_is_zero_without_known_ones():
    logits = RNG.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([2, -1, 0, -1], np.int32)
    want = _np_ce(logits[[0, 2]], labels[[0, 2]]).mean()
    got = L.ImageClassLoss(name="kit_image_class_loss")([tf.constant(labels), tf.constant(logits)])
    assert got.shape == () and got.dtype == tf.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    unknown = L.image_class_loss_graph(tf.constant([-1, -1]), tf.constant(logits[:2]))
    assert float(unknown) == 0.0
    perfect = np.array([[30.0, 0.0, 0.0], [0.0, 0.0, 30.0]], np.float32)
    assert float(L.image_class_loss_graph(tf.constant([0, 2]), tf.constant(perfect))) < 1e-6
