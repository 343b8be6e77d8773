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
    """Pixel y1x1y2x2 -> normalised (graph twin of utils.norm_boxes); shape is (h, w)."""
    h, w = tf.unstack(tf.cast(shape, tf.float32))
    scale = tf.stack([h - 1., w - 1., h - 1., w - 1.])
    return (tf.cast(boxes, tf.float32) - tf.constant([0., 0., 1., 1.])) / scale


def parse_image_meta_graph(meta: tf.Tensor) -> dict[str, tf.Tensor]:
    """Graph twin of utils.parse_image_meta (float32 parts of a (B, META) tensor)."""
    return {"image_id": meta[:, 0], "original_image_shape": meta[:, 1:4],
            "image_shape": meta[:, 4:7], "window": meta[:, 7:11], "scale": meta[:, 11],
            "active_class_ids": meta[:, 12:]}


def _pad_rows(x: tf.Tensor, rows: int) -> tf.Tensor:
    """Zero-pad (or keep) the first axis of ``x`` to exactly ``rows``."""
    pad = tf.maximum(rows - tf.shape(x)[0], 0)
    paddings = tf.concat([[[0, pad]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], axis=0)
    return tf.pad(x, paddings)


class GraphLayer(keras.layers.Layer):
    """Base of the custom layers: no XLA; output dtypes declared next to the shapes."""

    output_dtypes: tuple[str, ...] = ("float32",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False   # Layer.__init__ sets True; NMS/dynamic shapes break XLA

    def compute_output_spec(self, *args, **kwargs):
        shapes = self.compute_output_shape(
            keras.tree.map_structure(lambda t: tuple(t.shape), args[0]))
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
        return norm_boxes_graph(inputs, tf.constant([self.height, self.width]))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


class ParseImageMeta(GraphLayer):
    """One named part of the image meta [B, META] (see utils.compose_image_meta)."""

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
    """

    def __init__(self, proposal_count: int, nms_threshold: float, pre_nms_limit: int,
                 rpn_bbox_std_dev, **kwargs):
        super().__init__(**kwargs)
        self.proposal_count, self.nms_threshold = int(proposal_count), float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in rpn_bbox_std_dev]

    def call(self, inputs):
        probs, deltas, anchors = inputs
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
            return _pad_rows(tf.gather(b, keep), self.proposal_count)

        return tf.map_fn(nms, (boxes, scores), fn_output_signature=tf.float32)

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
    [B, N, C, 4] deltas / BBOX_STD_DEV, image_meta [B, META]. Each ROI takes its best class;
    background and scores below ``min_confidence`` are dropped, boxes are refined and clipped
    to the image window, NMS runs per class, and the best ``max_instances`` remain, sorted by
    score. Rows: [y1, x1, y2, x2, class_id, score] normalised to the molded image.
    """

    def __init__(self, max_instances: int, min_confidence: float, nms_threshold: float,
                 bbox_std_dev, **kwargs):
        super().__init__(**kwargs)
        self.max_instances, self.min_confidence = int(max_instances), float(min_confidence)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]

    def _one_image(self, args):
        rois, probs, deltas, window = args
        class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
        scores = tf.reduce_max(probs, axis=1)
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
        return _pad_rows(rows, self.max_instances)

    def call(self, inputs):
        rois, probs, deltas, meta = inputs
        parts = parse_image_meta_graph(meta)
        windows = tf.map_fn(lambda a: norm_boxes_graph(a[0], a[1][:2]),
                            (parts["window"], parts["image_shape"]),
                            fn_output_signature=tf.float32)
        return tf.map_fn(self._one_image, (rois, probs, deltas, windows),
                         fn_output_signature=tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.max_instances, 6)

    def get_config(self):
        return {**super().get_config(), "max_instances": self.max_instances,
                "min_confidence": self.min_confidence, "nms_threshold": self.nms_threshold,
                "bbox_std_dev": self.bbox_std_dev}


# ----------------------------------------------------------------------- training targets
class DetectionTargetLayer(GraphLayer):
    """Sample training ROIs from proposals and give each its class, box and mask targets.

    Inputs: proposals [B, N, 4] normalised (zero rows = padding), gt_class_ids [B, G] int
    (0 = padding, < 0 = crowd), gt_boxes [B, G, 4] normalised, gt_masks [B, h, w, G] (mini
    masks inside their gt box when ``use_mini_mask``, else full image masks).
    Positives: IoU >= 0.5 with a gt box (at most roi_positive_ratio * rois_per_image);
    negatives: IoU < 0.5 and not touching a crowd box, ``1/ratio - 1`` per positive, or
    ``negatives_without_positives`` when an image has no positive ROI (RSNA's empty images).
    Outputs (zero padded to rois_per_image): rois [B, T, 4], target_class_ids [B, T] int32,
    target_deltas [B, T, 4] (/ bbox_std_dev), target_mask [B, T, mask_h, mask_w] in {0, 1}.
    """

    output_dtypes = ("float32", "int32", "float32", "float32")

    def __init__(self, rois_per_image: int, roi_positive_ratio: float, bbox_std_dev,
                 mask_shape, use_mini_mask: bool, negatives_without_positives: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.rois_per_image, self.roi_positive_ratio = int(rois_per_image), roi_positive_ratio
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]
        self.mask_shape = [int(v) for v in mask_shape]
        self.use_mini_mask = bool(use_mini_mask)
        self.negatives_without_positives = int(negatives_without_positives)

    def _one_image(self, args):
        proposals, gt_class_ids, gt_boxes, gt_masks = args
        proposals = tf.boolean_mask(proposals, tf.reduce_any(proposals != 0, axis=1))
        real = tf.reduce_any(gt_boxes != 0, axis=1)
        gt_boxes, gt_class_ids = tf.boolean_mask(gt_boxes, real), tf.boolean_mask(gt_class_ids,
                                                                                   real)
        gt_masks = tf.boolean_mask(tf.transpose(tf.cast(gt_masks, tf.float32), [2, 0, 1]), real)
        crowd = gt_class_ids < 0
        crowd_boxes = tf.boolean_mask(gt_boxes, crowd)
        keep = tf.logical_not(crowd)
        gt_boxes, gt_class_ids = tf.boolean_mask(gt_boxes, keep), tf.boolean_mask(gt_class_ids,
                                                                                   keep)
        gt_masks = tf.boolean_mask(gt_masks, keep)

        overlaps = overlaps_graph(proposals, gt_boxes)                      # [N, G]
        # an extra zero column keeps max/argmax defined when the image has no gt box
        overlaps = tf.concat([overlaps, tf.zeros_like(proposals[:, :1])], axis=1)
        best_iou = tf.reduce_max(overlaps, axis=1)
        crowd_iou = tf.reduce_max(tf.concat(
            [overlaps_graph(proposals, crowd_boxes), tf.zeros_like(proposals[:, :1])], 1), 1)
        positive = tf.where(best_iou >= 0.5)[:, 0]
        negative = tf.where((best_iou < 0.5) & (crowd_iou < 0.001))[:, 0]
        max_pos = int(self.rois_per_image * self.roi_positive_ratio)
        positive = tf.random.shuffle(positive)[:max_pos]
        n_pos = tf.shape(positive)[0]
        n_neg = tf.where(
            n_pos > 0,
            tf.cast(tf.cast(n_pos, tf.float32) / self.roi_positive_ratio, tf.int32) - n_pos,
            self.negatives_without_positives)
        n_neg = tf.minimum(n_neg, self.rois_per_image - n_pos)
        negative = tf.random.shuffle(negative)[:n_neg]
        pos_rois = tf.gather(proposals, positive)
        neg_rois = tf.gather(proposals, negative)

        assign = tf.argmax(tf.gather(overlaps, positive), axis=1, output_type=tf.int32)
        roi_gt_boxes = tf.gather(gt_boxes, assign)
        class_ids = tf.cast(tf.gather(gt_class_ids, assign), tf.int32)
        deltas = box_refinement_graph(pos_rois, roi_gt_boxes) / tf.constant(self.bbox_std_dev)
        crop_boxes = pos_rois
        if self.use_mini_mask:   # ROI coordinates relative to its gt box (the mini mask frame)
            gy1, gx1, gy2, gx2 = tf.unstack(roi_gt_boxes, axis=1)
            y1, x1, y2, x2 = tf.unstack(pos_rois, axis=1)
            gh, gw = gy2 - gy1, gx2 - gx1
            crop_boxes = tf.stack([(y1 - gy1) / gh, (x1 - gx1) / gw,
                                   (y2 - gy1) / gh, (x2 - gx1) / gw], axis=1)
        masks = tf.image.crop_and_resize(tf.gather(gt_masks, assign)[..., None], crop_boxes,
                                         tf.range(n_pos), self.mask_shape)
        masks = tf.round(masks[..., 0])

        t = self.rois_per_image
        rois = _pad_rows(tf.concat([pos_rois, neg_rois], axis=0), t)
        return (rois, _pad_rows(class_ids, t), _pad_rows(deltas, t), _pad_rows(masks, t))

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        out = tf.map_fn(self._one_image,
                        (proposals, tf.cast(gt_class_ids, tf.int32), gt_boxes,
                         tf.cast(gt_masks, tf.float32)),
                        fn_output_signature=(tf.float32, tf.int32, tf.float32, tf.float32))
        t = self.rois_per_image
        return [tf.ensure_shape(out[0], [None, t, 4]), tf.ensure_shape(out[1], [None, t]),
                tf.ensure_shape(out[2], [None, t, 4]),
                tf.ensure_shape(out[3], [None, t, *self.mask_shape])]

    def compute_output_shape(self, input_shape):
        b, t = input_shape[0][0], self.rois_per_image
        return [(b, t, 4), (b, t), (b, t, 4), (b, t, *self.mask_shape)]

    def get_config(self):
        return {**super().get_config(), "rois_per_image": self.rois_per_image,
                "roi_positive_ratio": self.roi_positive_ratio,
                "bbox_std_dev": self.bbox_std_dev, "mask_shape": self.mask_shape,
                "use_mini_mask": self.use_mini_mask,
                "negatives_without_positives": self.negatives_without_positives}
