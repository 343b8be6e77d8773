"""kit.mrcnn graph layers against numpy references (tiny tensors, CPU)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kit.mrcnn import layers as L
from kit.mrcnn import molding, utils
from kit.mrcnn.backbone import BatchNorm
from kit.mrcnn.heads import fpn_classifier_graph
from kit.mrcnn.targets import DetectionTargetLayer

RNG = np.random.default_rng(0)


def _random_boxes(n: int, side: float = 1.0) -> np.ndarray:
    ys = np.sort(RNG.uniform(0, side, (n, 2)), 1)
    xs = np.sort(RNG.uniform(0, side, (n, 2)), 1)
    return np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=1).astype(np.float32)


def test_iou_graph_equals_numpy():
    assert L.overlaps_graph(tf.constant([[0., 0, 10, 10]]),
                            tf.constant([[5., 5, 15, 15]])).numpy()[0, 0] == pytest.approx(1 / 7)
    b1, b2 = _random_boxes(7), _random_boxes(4)
    np.testing.assert_allclose(L.overlaps_graph(tf.constant(b1), tf.constant(b2)).numpy(),
                               utils.compute_overlaps(b1, b2), atol=1e-6)


def test_delta_round_trip_graph_matches_numpy():
    boxes = _random_boxes(6, 100) + np.array([0, 0, 1, 1], np.float32)
    gt = _random_boxes(6, 100) + np.array([0, 0, 1, 1], np.float32)
    deltas = L.box_refinement_graph(tf.constant(boxes), tf.constant(gt)).numpy()
    np.testing.assert_allclose(deltas, utils.box_refinement(boxes, gt), rtol=1e-4, atol=1e-4)
    back = L.apply_box_deltas_graph(tf.constant(boxes), tf.constant(deltas)).numpy()
    np.testing.assert_allclose(back, gt, atol=1e-3)


def test_proposal_layer_nms_equals_numpy():
    anchors = _random_boxes(40)
    scores = RNG.uniform(size=40).astype(np.float32)
    probs = np.stack([1 - scores, scores], axis=1)[None]
    layer = L.ProposalLayer(proposal_count=40, nms_threshold=0.5, pre_nms_limit=100,
                            rpn_bbox_std_dev=[0.1, 0.1, 0.2, 0.2])
    out = layer([tf.constant(probs), tf.zeros((1, 40, 4)), tf.constant(anchors[None])]).numpy()[0]
    keep = utils.non_max_suppression(anchors, scores, 0.5)
    assert out.shape == (40, 4) and 0 < len(keep) < 40
    np.testing.assert_allclose(out[:len(keep)], anchors[keep], atol=1e-6)
    assert not out[len(keep):].any()          # zero padding after the kept boxes


def test_no_gradient_flows_back_through_proposals():
    """Torchvision detaches proposals too: head losses must not train the RPN through exp()."""
    anchors = tf.constant(_random_boxes(20)[None])
    probs = tf.Variable(np.stack([np.full(20, 0.4), np.full(20, 0.6)], 1)[None], dtype=tf.float32)
    deltas = tf.Variable(RNG.normal(size=(1, 20, 4)).astype(np.float32))
    layer = L.ProposalLayer(proposal_count=10, nms_threshold=0.7, pre_nms_limit=20,
                            rpn_bbox_std_dev=[0.1, 0.1, 0.2, 0.2])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.exp(layer([probs, deltas, anchors])))
    assert all(g is None for g in tape.gradient(loss, [probs, deltas]))


def _bilinear(fmap: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Numpy reference of tf.image.crop_and_resize (normalised box, sample grid inclusive)."""
    h, w, _ = fmap.shape
    y1, x1, y2, x2 = box
    out = np.zeros((size, size, fmap.shape[2]))
    for i in range(size):
        for j in range(size):
            y = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (size - 1)
            x = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (size - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            ya, xa = y - y0, x - x0
            y1i, x1i = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            out[i, j] = ((1 - ya) * (1 - xa) * fmap[y0, x0] + (1 - ya) * xa * fmap[y0, x1i]
                         + ya * (1 - xa) * fmap[y1i, x0] + ya * xa * fmap[y1i, x1i])
    return out


def test_roi_level_mapping():
    side = 1024
    sizes = np.array([224, 112, 448, 56, 8, 1000], np.float32)
    boxes = np.stack([np.zeros(6), np.zeros(6), sizes, sizes], 1).astype(np.float32) / side
    levels = L.roi_levels_graph(tf.constant(boxes), tf.constant(float(side * side))).numpy()
    assert levels.tolist() == [4, 3, 5, 2, 2, 5]


def test_pyramid_roi_align_matches_numpy_bilinear():
    side = 256                                   # P2..P5 of a 256 px image: 64, 32, 16, 8
    maps = [RNG.normal(size=(1, side // s, side // s, 3)).astype(np.float32)
            for s in (4, 8, 16, 32)]
    px = np.array([[10, 20, 40, 60], [0, 0, 120, 130], [30, 30, 250, 240]], np.float32)
    boxes = utils.norm_boxes(px, (side, side))
    meta = molding.compose_image_meta(0, (side, side, 3), (side, side, 3), (0, 0, side, side),
                                    1.0, np.ones(2))[None]
    out = L.PyramidROIAlign([5, 5])([tf.constant(boxes[None]), tf.constant(meta),
                                     *map(tf.constant, maps)]).numpy()
    assert out.shape == (1, 3, 5, 5, 3)
    levels = L.roi_levels_graph(tf.constant(boxes), tf.constant(float(side * side))).numpy()
    assert len(set(levels.tolist())) > 1      # the boxes really use different levels
    for k, level in enumerate(levels):
        ref = _bilinear(maps[level - 2][0], boxes[k], 5)
        np.testing.assert_allclose(out[0, k], ref, atol=1e-4)


def test_detection_layer_filters_sorts_and_pads():
    rois = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5],
                     [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 1.0, 1.0]],
                    np.float32)
    probs = np.array([[0.1, 0.8, 0.1],     # class 1, kept (best of its cluster)
                      [0.1, 0.7, 0.2],     # class 1, suppressed by row 0
                      [0.1, 0.1, 0.8],     # class 2 on the same box: kept (own class)
                      [0.2, 0.75, 0.05],   # class 1, separate box: kept
                      [0.9, 0.05, 0.05],   # background: dropped
                      [0.35, 0.6, 0.05]],  # below min_confidence 0.7: dropped
                     np.float32)
    deltas = np.zeros((6, 3, 4), np.float32)
    window = (0, 0, 100, 128)                # molded image 128x128, real image in rows 0..100
    meta = molding.compose_image_meta(0, (100, 128, 3), (128, 128, 3), window, 1.0, np.ones(3))
    layer = L.DetectionLayer(max_instances=5, min_confidence=0.7, nms_threshold=0.3,
                             bbox_std_dev=[0.1, 0.1, 0.2, 0.2])
    out = layer([tf.constant(rois[None]), tf.constant(probs[None]), tf.constant(deltas[None]),
                 tf.constant(meta[None])]).numpy()[0]
    assert out.shape == (5, 6)
    np.testing.assert_allclose(out[:, 5], [0.8, 0.8, 0.75, 0, 0], atol=1e-6)
    assert sorted(out[:2, 4].tolist()) == [1.0, 2.0] and out[2, 4] == 1.0
    wy2 = 99 / 127                            # clipped to the window's bottom (normalised)
    np.testing.assert_allclose(out[2, :4], [0.6, 0.6, wy2, 0.9], atol=1e-6)
    assert not out[3:].any()


def test_detection_layer_best_foreground_scores_every_roi_by_its_object_probability():
    # background wins both ROIs, so Matterport's argmax drops them; raw RSNA detections keep them
    rois = np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]], np.float32)
    probs = np.array([[0.7, 0.3], [0.9, 0.1]], np.float32)
    deltas = np.zeros((2, 2, 4), np.float32)
    meta = molding.compose_image_meta(0, (128, 128, 3), (128, 128, 3), (0, 0, 128, 128), 1.0,
                                    np.ones(2))
    inputs = [tf.constant(rois[None]), tf.constant(probs[None]), tf.constant(deltas[None]),
              tf.constant(meta[None])]
    std = [0.1, 0.1, 0.2, 0.2]
    plain = L.DetectionLayer(4, 0.05, 0.3, std)(inputs).numpy()[0]
    assert not plain.any()
    fg = L.DetectionLayer(4, 0.05, 0.3, std, best_foreground=True)(inputs).numpy()[0]
    np.testing.assert_allclose(fg[:2, 5], [0.3, 0.1], atol=1e-6)
    np.testing.assert_array_equal(fg[:2, 4], [1, 1])
    np.testing.assert_allclose(fg[:2, :4], rois, atol=1e-6)
    assert not fg[2:].any()


def test_detection_target_layer_positive_and_empty_images():
    gt = np.array([[[0.2, 0.2, 0.6, 0.6], [0, 0, 0, 0]], [[0, 0, 0, 0]] * 2], np.float32)
    gt_ids = np.array([[1, 0], [0, 0]], np.int32)
    proposals = np.zeros((2, 6, 4), np.float32)
    proposals[:, 0] = [0.2, 0.2, 0.6, 0.6]         # exact gt box: positive, zero deltas
    proposals[:, 1:4] = [[0.7, 0.7, 0.9, 0.9], [0.0, 0.0, 0.1, 0.1], [0.65, 0.0, 0.9, 0.3]]
    masks = np.zeros((2, 8, 8, 2), bool)
    masks[0, :, :, 0] = True                        # mini mask: the whole gt box
    layer = DetectionTargetLayer(rois_per_image=6, roi_positive_ratio=0.5,
                                   bbox_std_dev=[0.1, 0.1, 0.2, 0.2], mask_shape=[4, 4],
                                   use_mini_mask=True, negatives_without_positives=2)
    rois, class_ids, deltas, target_masks = [t.numpy() for t in layer(
        [tf.constant(proposals), tf.constant(gt_ids), tf.constant(gt), tf.constant(masks)])]
    assert rois.shape == (2, 6, 4) and class_ids.dtype == np.int32
    assert target_masks.shape == (2, 6, 4, 4)
    # image 0: one positive (first), one negative (ratio 0.5), rest zero padding
    assert class_ids[0].tolist() == [1, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(rois[0, 0], [0.2, 0.2, 0.6, 0.6])
    assert rois[0, 1].any() and not rois[0, 2:].any()
    np.testing.assert_allclose(deltas[0], 0, atol=1e-5)
    assert target_masks[0, 0].all() and not target_masks[0, 1:].any()
    # image 1 (no gt): exactly negatives_without_positives background ROIs, never NaN
    assert class_ids[1].tolist() == [0] * 6
    assert (np.abs(rois[1]).sum(axis=1) > 0).sum() == 2
    assert np.isfinite(deltas).all() and np.isfinite(target_masks).all()


def test_helper_layers():
    x = tf.constant(RNG.normal(size=(2, 5, 3, 3, 4)).astype(np.float32))
    merged = L.MergeROIs()(x)
    assert merged.shape == (10, 3, 3, 4)
    np.testing.assert_array_equal(L.SplitROIs(5)(merged).numpy(), x.numpy())
    boxes = np.array([[[0, 0, 128, 64]]], np.float32)
    np.testing.assert_allclose(L.NormBoxes(128, 64)(tf.constant(boxes)).numpy(),
                               utils.norm_boxes(boxes[0], (128, 64))[None], atol=1e-7)
    meta = molding.compose_image_meta(3, (10, 20, 3), (64, 64, 3), (1, 2, 3, 4), 0.5,
                                    np.array([1, 0, 1]))[None]
    active = L.ParseImageMeta("active_class_ids")(tf.constant(meta)).numpy()
    assert active.tolist() == [[1, 0, 1]]
    anchors = L.AnchorsLayer([8, 16, 32, 64, 128], [0.5, 1, 2], [[16, 16], [8, 8], [4, 4],
                             [2, 2], [1, 1]], [4, 8, 16, 32, 64], 1, [64, 64, 3])(
        tf.zeros((2, 64, 64, 3))).numpy()
    assert anchors.shape == (2, 1023, 4)
    expected = utils.generate_pyramid_anchors([8, 16, 32, 64, 128], [0.5, 1, 2],
                                              np.array([[16, 16], [8, 8], [4, 4], [2, 2],
                                                        [1, 1]]), [4, 8, 16, 32, 64], 1)
    np.testing.assert_allclose(anchors[1], utils.norm_boxes(expected, (64, 64)))


def test_layers_serialise_scalars():
    layer = L.DetectionLayer(7, 0.5, 0.3, [0.1, 0.1, 0.2, 0.2], name="det")
    clone = L.DetectionLayer.from_config(layer.get_config())
    assert clone.max_instances == 7 and clone.bbox_std_dev == [0.1, 0.1, 0.2, 0.2]
    assert clone.supports_jit is False


def test_frozen_batchnorm_ignores_training_flag():
    bn = BatchNorm(train_bn=False)
    x = tf.constant(RNG.normal(3.0, 2.0, size=(4, 5)).astype(np.float32))
    inference = bn(x, training=False).numpy()
    trained = bn(x, training=True).numpy()
    np.testing.assert_array_equal(trained, inference)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(5))
    free = BatchNorm(train_bn=True)
    free(x, training=True)
    assert np.abs(free.moving_mean.numpy()).sum() > 0


def _classifier_op_count(num_rois: int) -> int:
    rois = keras.Input((num_rois, 4))
    meta = keras.Input((14,))
    maps = [keras.Input((s, s, 8)) for s in (16, 8, 4, 2)]
    outs = fpn_classifier_graph(rois, maps, meta, pool_size=3, num_classes=2,
                                num_rois=num_rois, train_bn=False, fc_layers_size=16)
    model = keras.Model([rois, meta, *maps], list(outs))
    specs = [tf.TensorSpec((1, *t.shape[1:]), tf.float32) for t in model.inputs]
    graph = tf.function(lambda *xs: model(list(xs))).get_concrete_function(*specs).graph
    return len(graph.get_operations())


def test_classifier_graph_size_does_not_scale_with_rois():
    assert _classifier_op_count(10) == _classifier_op_count(100)


def test_target_and_detection_layers_trace_with_unknown_shapes():
    """Under fit() the inputs can arrive without static shapes: the layers must still trace."""
    targets = DetectionTargetLayer(4, 0.5, [0.1, 0.1, 0.2, 0.2], [4, 4], True, 2)
    spec = tf.TensorSpec
    traced = tf.function(lambda p, c, b, m: targets([p, c, b, m])).get_concrete_function(
        spec([None, None, None]), spec([None, None], tf.int32), spec([None, None, None]),
        spec([None, None, None, None], tf.bool))
    assert traced.structured_outputs[0].shape.as_list() == [None, 4, 4]
    detection = L.DetectionLayer(3, 0.5, 0.3, [0.1, 0.1, 0.2, 0.2])
    traced = tf.function(lambda r, p, d, m: detection([r, p, d, m])).get_concrete_function(
        spec([None, None, None]), spec([None, None, None]), spec([None, None, None, None]),
        spec([None, None]))
    assert traced.structured_outputs.shape.as_list() == [None, 3, 6]


def test_first_rois_and_positive_rows_keep_order_dtype_and_never_empty():
    x = tf.reshape(tf.range(2 * 4 * 3, dtype=tf.float32), [2, 4, 3])
    ids = tf.constant([[1, 1, 0, 0], [1, 0, 0, 0]], tf.int32)
    first = L.FirstROIs(2)(ids)
    assert first.dtype == tf.int32 and first.numpy().tolist() == [[1, 1], [1, 0]]
    rows = L.PositiveRows()([x, ids]).numpy()
    np.testing.assert_array_equal(rows, x.numpy().reshape(8, 3)[[0, 1, 4]])
    kept_ids = L.PositiveRows()([ids, ids])
    assert kept_ids.dtype == tf.int32 and kept_ids.numpy().tolist() == [1, 1, 1]
    none = L.PositiveRows()([x, tf.zeros_like(ids)]).numpy()      # all negative: first row
    np.testing.assert_array_equal(none, x.numpy()[:1, 0])
    sym = L.PositiveRows()([keras.Input((4, 7, 7, 5)), keras.Input((4,), dtype="int32")])
    assert tuple(sym.shape) == (None, 7, 7, 5)


def _far_case():
    """One image, two gt boxes, proposals that all miss them (IoU < 0.5 with both)."""
    gt = np.array([[[0.1, 0.1, 0.3, 0.3], [0.6, 0.5, 0.9, 0.8], [0, 0, 0, 0]]], np.float32)
    gt_ids = np.array([[1, 1, 0]], np.int32)
    proposals = np.zeros((1, 8, 4), np.float32)
    proposals[0, :5] = [[0.0, 0.6, 0.2, 0.9], [0.4, 0.0, 0.5, 0.2], [0.3, 0.3, 0.5, 0.5],
                        [0.1, 0.1, 0.15, 0.15], [0.85, 0.0, 1.0, 0.1]]
    masks = np.zeros((1, 8, 8, 3), bool)
    masks[0, :, :, :2] = True                                   # mini masks: whole gt boxes
    return [tf.constant(v) for v in (proposals, gt_ids, gt, masks)]


def test_detection_targets_proposals_with_gt_gives_positives_when_proposals_miss():
    inputs = _far_case()
    kwargs = dict(rois_per_image=6, roi_positive_ratio=0.5, bbox_std_dev=[0.1, 0.1, 0.2, 0.2],
                  mask_shape=[4, 4], use_mini_mask=True, negatives_without_positives=3)
    off = [t.numpy() for t in DetectionTargetLayer(**kwargs, seed=1)(inputs)]
    assert off[1].tolist() == [[0] * 6]                          # Matterport: no positive
    assert (np.abs(off[0][0]).sum(axis=1) > 0).sum() == 3        # only the negatives
    rois, class_ids, deltas, masks = (t.numpy() for t in DetectionTargetLayer(
        **kwargs, proposals_with_gt=True, seed=1)(inputs))
    assert class_ids[0].tolist() == [1, 1, 0, 0, 0, 0]            # both gt boxes, then 2 negatives
    gt = inputs[2].numpy()[0, :2]
    assert sorted(map(tuple, rois[0, :2].round(6))) == sorted(map(tuple, gt.round(6)))
    np.testing.assert_allclose(deltas[0, :2], 0, atol=1e-6)       # a gt box needs no refinement
    assert masks[0, :2].all() and not masks[0, 2:].any()
    negatives = rois[0, 2:4]
    assert utils.compute_overlaps(negatives, gt).max() < 0.5 and not rois[0, 4:].any()
    clone = DetectionTargetLayer.from_config(DetectionTargetLayer(
        **kwargs, proposals_with_gt=True, seed=7).get_config())
    assert clone.proposals_with_gt is True and clone.seed == 7


def test_detection_target_sampling_is_seeded_per_call_and_per_image():
    n = 40
    proposals = np.concatenate([_random_boxes(n - 8), np.tile([[0.2, 0.2, 0.6, 0.6]], (8, 1))])
    proposals = np.stack([proposals, proposals]).astype(np.float32)   # two identical images
    gt = np.array([[[0.2, 0.2, 0.6, 0.6]]] * 2, np.float32)
    inputs = [tf.constant(proposals), tf.constant([[1], [1]], tf.int32), tf.constant(gt),
              tf.constant(np.ones((2, 4, 4, 1), bool))]

    def layer(seed):
        return DetectionTargetLayer(8, 0.25, [0.1, 0.1, 0.2, 0.2], [4, 4], True, 4, seed=seed)

    first, again = layer(3), layer(3)
    a1, a2, b1 = first(inputs)[0].numpy(), first(inputs)[0].numpy(), again(inputs)[0].numpy()
    np.testing.assert_array_equal(a1, b1)            # same seed, same call number: same ROIs
    assert not np.array_equal(a1, a2)                # the next call samples afresh
    assert not np.array_equal(a1[0], a1[1])          # each image of a batch its own sample
    assert not np.array_equal(a1, layer(4)(inputs)[0].numpy())
    assert [v.name for v in first.weights] == []     # the seed state is not a weight
