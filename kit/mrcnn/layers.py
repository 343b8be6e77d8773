"""Custom graph layers of Mask R-CNN (TensorFlow ops inside Keras 3 Layer subclasses).

Boxes inside the graph are NORMALISED y1x1y2x2 (``utils.norm_boxes``: pixel / (size - 1),
y2/x2 shifted by one pixel). Every layer takes scalars (not the config), is serialisable via
get_config, declares compute_output_shape and sets ``supports_jit = False`` (NMS and dynamic
shapes do not compile under XLA). Per-image work uses tf.map_fn, so any batch size runs.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kit.mrcnn import utils

if keras.backend.backend() != "tensorflow":
    raise ImportError("kit.mrcnn needs the TensorFlow backend of Keras (KERAS_BACKEND=tensorflow)")


# ----------------------------------------------------------------------- graph box geometry
def apply_box_deltas_graph(boxes: tf.Tensor, deltas: tf.Tensor) -> tf.Tensor:
    """Apply (..., 4) deltas (dy, dx, log dh, log dw) to (..., 4) y1x1y2x2 boxes."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h + deltas[..., 0] * h
    cx = boxes[..., 1] + 0.5 * w + deltas[..., 1] * w
    h = h * tf.exp(deltas[..., 2])
    w = w * tf.exp(deltas[..., 3])
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def box_refinement_graph(box: tf.Tensor, gt_box: tf.Tensor) -> tf.Tensor:
    """Deltas (N, 4) that turn y1x1y2x2 ``box`` into ``gt_box`` (graph twin of utils)."""
    box, gt_box = tf.cast(box, tf.float32), tf.cast(gt_box, tf.float32)
    h, w = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    gh, gw = gt_box[:, 2] - gt_box[:, 0], gt_box[:, 3] - gt_box[:, 1]
    dy = (gt_box[:, 0] + 0.5 * gh - box[:, 0] - 0.5 * h) / h
    dx = (gt_box[:, 1] + 0.5 * gw - box[:, 1] - 0.5 * w) / w
    return tf.stack([dy, dx, tf.math.log(gh / h), tf.math.log(gw / w)], axis=1)


def clip_boxes_graph(boxes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """Clip (..., 4) y1x1y2x2 boxes into ``window`` [wy1, wx1, wy2, wx2]."""
    wy1, wx1, wy2, wx2 = tf.unstack(window)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack([tf.clip_by_value(y1, wy1, wy2), tf.clip_by_value(x1, wx1, wx2),
                     tf.clip_by_value(y2, wy1, wy2), tf.clip_by_value(x2, wx1, wx2)], axis=-1)


def overlaps_graph(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """IoU matrix (N1, N2) of y1x1y2x2 boxes (0 where the union is 0)."""
    b1, b2 = boxes1[:, None, :], boxes2[None, :, :]
    ih = tf.maximum(tf.minimum(b1[..., 2], b2[..., 2]) - tf.maximum(b1[..., 0], b2[..., 0]), 0.)
    iw = tf.maximum(tf.minimum(b1[..., 3], b2[..., 3]) - tf.maximum(b1[..., 1], b2[..., 1]), 0.)
    inter = ih * iw
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return tf.math.divide_no_nan(inter, area1 + area2 - inter)


def norm_boxes_graph(boxes: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Pixel y1x1y2x2 -> normalised (graph twin of utils.norm_boxes).

    ``shape`` is (h, w), or (..., 2) per box to broadcast against boxes (..., 4).
    """
    shape = tf.cast(shape, tf.float32)
    scale = tf.concat([shape - 1.0, shape - 1.0], axis=-1)
    return (tf.cast(boxes, tf.float32) - tf.constant([0., 0., 1., 1.])) / scale


def parse_image_meta_graph(meta: tf.Tensor) -> dict[str, tf.Tensor]:
    """Graph twin of molding.parse_image_meta (float32 parts of a (B, META) tensor)."""
    return {"image_id": meta[:, 0], "original_image_shape": meta[:, 1:4],
            "image_shape": meta[:, 4:7], "window": meta[:, 7:11], "scale": meta[:, 11],
            "active_class_ids": meta[:, 12:]}


def pad_rows(x: tf.Tensor, rows: int) -> tf.Tensor:
    """Zero-pad (or keep) the first axis of ``x`` to exactly ``rows``."""
    pad = tf.maximum(rows - tf.shape(x)[0], 0)
    paddings = tf.concat([[[0, pad]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], axis=0)
    return tf.pad(x, paddings)


class GraphLayer(keras.layers.Layer):
    """Base of the custom layers: float32 math (also under mixed precision), no XLA, output
    dtypes declared next to the shapes."""

    output_dtypes: tuple[str, ...] | None = ("float32",)   # None: the first input's dtype

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")   # inputs are autocast; box math stays float32
        super().__init__(**kwargs)
        self.supports_jit = False   # Layer.__init__ sets True; NMS/dynamic shapes break XLA

    def compute_output_spec(self, *args, **kwargs):
        shapes = self.compute_output_shape(
            keras.tree.map_structure(lambda t: tuple(t.shape), args[0]))
        if self.output_dtypes is None:     # pass-through layers keep int ids int
            return keras.KerasTensor(shapes, dtype=keras.tree.flatten(args[0])[0].dtype)
        if len(self.output_dtypes) == 1:
            return keras.KerasTensor(shapes, dtype=self.output_dtypes[0])
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, self.output_dtypes)]


# ------------------------------------------------------------------------- helper layers
class AnchorsLayer(GraphLayer):
    """Constant pyramid anchors, normalised y1x1y2x2, tiled to the batch of its input.

    Built from scalars (utils.generate_pyramid_anchors order), so the anchors are a graph
    constant and never a weight. Input: any [B, ...] tensor (the image). Output: [B, A, 4].
    """

    def __init__(self, scales, ratios, feature_shapes, feature_strides, anchor_stride,
                 image_shape, **kwargs):
        super().__init__(**kwargs)
        self.scales, self.ratios = list(scales), list(ratios)
        self.feature_shapes = [list(map(int, s)) for s in feature_shapes]
        self.feature_strides = list(feature_strides)
        self.anchor_stride, self.image_shape = int(anchor_stride), list(map(int, image_shape))
        pixels = utils.generate_pyramid_anchors(self.scales, self.ratios,
                                                np.array(self.feature_shapes),
                                                self.feature_strides, self.anchor_stride)
        self.anchors = utils.norm_boxes(pixels, self.image_shape[:2])

    def call(self, inputs):
        anchors = tf.constant(self.anchors)
        return tf.tile(anchors[None], [tf.shape(inputs)[0], 1, 1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.anchors), 4)

    def get_config(self):
        return {**super().get_config(), "scales": self.scales, "ratios": self.ratios,
                "feature_shapes": self.feature_shapes, "feature_strides": self.feature_strides,
                "anchor_stride": self.anchor_stride, "image_shape": self.image_shape}


class NormBoxes(GraphLayer):
    """Pixel y1x1y2x2 boxes [B, N, 4] -> normalised, for a fixed (height, width)."""

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, inputs):
        return norm_boxes_graph(inputs, tf.constant([self.height, self.width], tf.float32))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


class ParseImageMeta(GraphLayer):
    """One named part of the image meta [B, META] (see molding.compose_image_meta)."""

    _WIDTHS = {"image_id": 1, "original_image_shape": 3, "image_shape": 3, "window": 4,
               "scale": 1}

    def __init__(self, field: str, **kwargs):
        super().__init__(**kwargs)
        self.field = field

    def call(self, inputs):
        return parse_image_meta_graph(inputs)[self.field]

    def compute_output_shape(self, input_shape):
        if self.field == "active_class_ids":
            return (input_shape[0], input_shape[1] - 12)
        width = self._WIDTHS[self.field]
        return (input_shape[0],) if width == 1 else (input_shape[0], width)

    def get_config(self):
        return {**super().get_config(), "field": self.field}


class MergeROIs(GraphLayer):
    """[B, N, ...] -> [B*N, ...] so per-ROI heads run as plain layers (no TimeDistributed)."""

    def call(self, inputs):
        return tf.reshape(inputs, tf.concat([[-1], tf.shape(inputs)[2:]], axis=0))

    def compute_output_shape(self, input_shape):
        n = None if None in input_shape[:2] else input_shape[0] * input_shape[1]
        return (n, *input_shape[2:])


class FirstROIs(GraphLayer):
    """[B, N, ...] -> [B, n, ...]: the first ``n`` ROIs of each image (any dtype)."""

    output_dtypes = None

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, inputs):
        return inputs[:, :self.n]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n, *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class PositiveRows(GraphLayer):
    """Rows of ``x`` [B, N, ...] whose class id [B, N] is > 0, flattened to [K, ...].

    When no row is positive, the first row is kept instead (its class id is 0, so the losses
    ignore it) and layers with batch statistics never see an empty batch.
    """

    output_dtypes = None

    def call(self, inputs):
        x, class_ids = inputs
        keep = tf.reshape(class_ids, [-1]) > 0
        first = tf.equal(tf.range(tf.size(keep)), 0)
        keep = keep | (first & tf.logical_not(tf.reduce_any(keep)))
        return tf.boolean_mask(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)), keep)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[0][2:])


class SplitROIs(GraphLayer):
    """[B*N, ...] -> [B, N, ...] with N = ``num_rois``; inverse of MergeROIs."""

    def __init__(self, num_rois: int, **kwargs):
        super().__init__(**kwargs)
        self.num_rois = int(num_rois)

    def call(self, inputs):
        return tf.reshape(inputs, tf.concat([[-1, self.num_rois], tf.shape(inputs)[1:]], 0))

    def compute_output_shape(self, input_shape):
        return (None, self.num_rois, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "num_rois": self.num_rois}


# ------------------------------------------------------------------------- proposals
class ProposalLayer(GraphLayer):
    """RPN scores + deltas + anchors -> top proposals after NMS, zero padded.

    Inputs: rpn_probs [B, A, 2], rpn_bbox [B, A, 4] (deltas / RPN_BBOX_STD_DEV), anchors
    [B, A, 4] normalised. Output: [B, proposal_count, 4] normalised y1x1y2x2 clipped to [0, 1].
    Proposals are constants for what follows: no gradient flows back into the RPN through them
    (the head losses would otherwise pull on rpn_bbox_pred through exp() of its deltas, which
    sent short from-scratch runs to NaN).
    """

    def __init__(self, proposal_count: int, nms_threshold: float, pre_nms_limit: int,
                 rpn_bbox_std_dev, **kwargs):
        super().__init__(**kwargs)
        self.proposal_count, self.nms_threshold = int(proposal_count), float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in rpn_bbox_std_dev]

    def call(self, inputs):
        probs, deltas, anchors = (tf.stop_gradient(t) for t in inputs)
        scores = probs[:, :, 1]
        deltas = deltas * tf.constant(self.rpn_bbox_std_dev, tf.float32)
        k = tf.minimum(self.pre_nms_limit, tf.shape(anchors)[1])
        scores, ix = tf.math.top_k(scores, k=k, sorted=True)
        deltas = tf.gather(deltas, ix, batch_dims=1)
        anchors = tf.gather(anchors, ix, batch_dims=1)
        boxes = clip_boxes_graph(apply_box_deltas_graph(anchors, deltas),
                                 tf.constant([0., 0., 1., 1.]))

        def nms(args):
            b, s = args
            keep = tf.image.non_max_suppression(b, s, self.proposal_count, self.nms_threshold)
            return pad_rows(tf.gather(b, keep), self.proposal_count)

        out = tf.map_fn(nms, (boxes, scores), fn_output_signature=tf.float32)
        return tf.ensure_shape(out, [None, self.proposal_count, 4])

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        return {**super().get_config(), "proposal_count": self.proposal_count,
                "nms_threshold": self.nms_threshold, "pre_nms_limit": self.pre_nms_limit,
                "rpn_bbox_std_dev": self.rpn_bbox_std_dev}


# --------------------------------------------------------------------------- ROI align
def roi_levels_graph(boxes: tf.Tensor, image_area: tf.Tensor) -> tf.Tensor:
    """Pyramid level 2..5 of each normalised box: 4 + log2(sqrt(h*w) / (224 / sqrt(area)))."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    level = tf.math.log(tf.sqrt(h * w) / (224.0 / tf.sqrt(image_area))) / tf.math.log(2.0)
    return tf.clip_by_value(4 + tf.cast(tf.round(level), tf.int32), 2, 5)


class PyramidROIAlign(GraphLayer):
    """Crop + bilinear-resize each ROI from the pyramid level its size picks.

    Inputs: [boxes [B, N, 4] normalised, image_meta [B, META], P2, P3, P4, P5].
    Output: [B, N, pool_height, pool_width, channels], in the order of ``boxes``.
    """

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)

    def call(self, inputs):
        boxes, meta, *feature_maps = inputs
        image_shape = parse_image_meta_graph(meta)["image_shape"][0]
        levels = roi_levels_graph(boxes, image_shape[0] * image_shape[1])
        n = tf.shape(boxes)[1]
        flat_boxes = tf.reshape(boxes, [-1, 4])
        flat_levels = tf.reshape(levels, [-1])
        batch_index = tf.repeat(tf.range(tf.shape(boxes)[0]), n)
        positions, pooled = [], []
        for i, fmap in enumerate(feature_maps):
            ix = tf.cast(tf.where(tf.equal(flat_levels, i + 2))[:, 0], tf.int32)
            positions.append(ix)
            pooled.append(tf.image.crop_and_resize(
                fmap, tf.stop_gradient(tf.gather(flat_boxes, ix)),
                tf.stop_gradient(tf.gather(batch_index, ix)), self.pool_shape,
                method="bilinear"))
        merged = tf.dynamic_stitch(positions, pooled)
        return tf.reshape(merged, tf.concat(
            [tf.shape(boxes)[:2], tf.shape(merged)[1:]], axis=0))

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:2], *self.pool_shape, input_shape[2][-1])

    def get_config(self):
        return {**super().get_config(), "pool_shape": list(self.pool_shape)}


# --------------------------------------------------------------------------- detections
class DetectionLayer(GraphLayer):
    """Classified ROIs -> final detections [B, max_instances, 6], zero padded.

    Inputs: rois [B, N, 4] normalised, mrcnn_class [B, N, C] probabilities, mrcnn_bbox
    [B, N, C, 4] deltas / BBOX_STD_DEV, image_meta [B, META]. Each ROI takes its best class
    (Matterport), or with ``best_foreground`` its best non-background class even when background
    is likelier (raw detections for offline threshold tuning: a 2-class ROI scores P(object));
    background and scores below ``min_confidence`` are dropped, boxes are refined and clipped
    to the image window, NMS runs per class, and the best ``max_instances`` remain, sorted by
    score. Rows: [y1, x1, y2, x2, class_id, score] normalised to the molded image.
    """

    def __init__(self, max_instances: int, min_confidence: float, nms_threshold: float,
                 bbox_std_dev, best_foreground: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.max_instances, self.min_confidence = int(max_instances), float(min_confidence)
        self.best_foreground = bool(best_foreground)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]

    def _one_image(self, args):
        rois, probs, deltas, window = args
        rois = tf.reshape(rois, [-1, 4])
        if self.best_foreground:
            class_ids = tf.argmax(probs[:, 1:], axis=1, output_type=tf.int32) + 1
        else:
            class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
        scores = tf.gather(probs, class_ids, batch_dims=1)
        deltas = tf.gather(deltas, class_ids, batch_dims=1) * tf.constant(self.bbox_std_dev)
        boxes = clip_boxes_graph(apply_box_deltas_graph(rois, deltas), window)
        keep = tf.where((class_ids > 0) & (scores >= self.min_confidence))[:, 0]
        boxes, class_ids, scores = (tf.gather(t, keep) for t in (boxes, class_ids, scores))
        # per-class NMS in one call: shift each class to its own region so classes never overlap
        offset = tf.cast(class_ids, tf.float32)[:, None] * 2.0
        keep = tf.image.non_max_suppression(boxes + offset, scores, self.max_instances,
                                            self.nms_threshold)
        rows = tf.concat([tf.gather(boxes, keep),
                          tf.cast(tf.gather(class_ids, keep), tf.float32)[:, None],
                          tf.gather(scores, keep)[:, None]], axis=1)
        return pad_rows(rows, self.max_instances)

    def call(self, inputs):
        rois, probs, deltas, meta = inputs
        parts = parse_image_meta_graph(meta)
        windows = norm_boxes_graph(parts["window"], parts["image_shape"][:, :2])
        out = tf.map_fn(self._one_image, (rois, probs, deltas, windows),
                        fn_output_signature=tf.float32)
        return tf.ensure_shape(out, [None, self.max_instances, 6])

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.max_instances, 6)

    def get_config(self):
        return {**super().get_config(), "max_instances": self.max_instances,
                "min_confidence": self.min_confidence, "nms_threshold": self.nms_threshold,
                "bbox_std_dev": self.bbox_std_dev, "best_foreground": self.best_foreground}

