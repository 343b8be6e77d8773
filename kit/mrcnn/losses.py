"""The five Mask R-CNN training losses (Matterport's definitions), as tf functions and Keras layers.

Plus the kit's own ``kit_image_class_loss`` of the image-level head (not in Matterport; only
when config.IMAGE_CLASSES > 0): softmax cross-entropy per image, unknown classes (-1) skipped.

Every loss is a float32 scalar (shape ``()``): the mean over whatever it scores in the whole
(per-replica) batch. When there is nothing to score (no positive anchor, no positive ROI, no
active predicted class) the loss is exactly 0, never NaN, so images without boxes (about 77% of
RSNA) train safely.

Conventions (as in the training graph):

* ``rpn_match`` [B, A, 1] int: 1 positive anchor, -1 negative, 0 neutral (ignored).
* ``rpn_bbox`` targets [B, T, 4]: (dy, dx, log(dh), log(dw)) of the positive anchors of each
  image in anchor order, already divided by RPN_BBOX_STD_DEV, zero padded to
  T = RPN_TRAIN_ANCHORS_PER_IMAGE rows.
* ``target_class_ids`` [B, R] int: class of each sampled ROI, 0 = background or padding.
* ``target_bbox`` [B, R, 4] deltas (normalised by BBOX_STD_DEV); ``target_mask`` [B, R, h, w]
  in [0, 1]; predicted ``mrcnn_bbox`` [B, R, C, 4] and ``mrcnn_mask`` [B, R, h, w, C].

The layers compute in float32 whatever the global dtype policy (mixed precision safe).
"""
from __future__ import annotations

import keras
import tensorflow as tf

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")


def smooth_l1(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Element-wise smooth L1 (Huber with delta 1): 0.5 d^2 where |d| < 1, else |d| - 0.5."""
    diff = tf.abs(y_true - y_pred)
    return tf.where(diff < 1.0, 0.5 * tf.square(diff), diff - 0.5)


def _mean_or_zero(values: tf.Tensor) -> tf.Tensor:
    """Mean of a 1-D (or any) float tensor, 0.0 when it is empty."""
    values = tf.reshape(values, [-1])
    count = tf.cast(tf.size(values), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(values), count)


def rpn_class_loss_graph(rpn_match: tf.Tensor, rpn_class_logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of anchor objectness over the non-neutral anchors.

    rpn_match: [B, A, 1] int (1, -1, 0). rpn_class_logits: [B, A, 2] (background, object).
    Returns a float32 scalar: mean over anchors with rpn_match != 0, 0 if there are none.
    """
    rpn_match = tf.squeeze(tf.cast(rpn_match, tf.int32), -1)
    logits = tf.cast(rpn_class_logits, tf.float32)
    used = tf.not_equal(rpn_match, 0)
    labels = tf.cast(tf.equal(tf.boolean_mask(rpn_match, used), 1), tf.int32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.boolean_mask(logits, used))
    return _mean_or_zero(ce)


def rpn_bbox_loss_graph(target_bbox: tf.Tensor, rpn_match: tf.Tensor,
                        rpn_bbox: tf.Tensor) -> tf.Tensor:
    """Smooth-L1 of the RPN deltas over the positive anchors.

    target_bbox: [B, T, 4], the deltas of image b's positive anchors in anchor order, padded.
    rpn_match: [B, A, 1] int. rpn_bbox: [B, A, 4] predicted deltas.
    The k-th positive anchor of image b (in anchor order) is paired with target row k; positives
    beyond T have no target and are not scored. Returns a float32 scalar, 0 with no positives.
    """
    rpn_match = tf.squeeze(tf.cast(rpn_match, tf.int32), -1)
    target_bbox = tf.cast(target_bbox, tf.float32)
    rows = tf.shape(target_bbox)[1]
    positive = tf.equal(rpn_match, 1)
    rank = tf.cumsum(tf.cast(positive, tf.int32), axis=1) - 1
    scored = tf.logical_and(positive, rank < rows)
    pred = tf.boolean_mask(tf.cast(rpn_bbox, tf.float32), scored)
    counts = tf.reduce_sum(tf.cast(scored, tf.int32), axis=1)
    target = tf.boolean_mask(target_bbox, tf.sequence_mask(counts, rows))
    return _mean_or_zero(smooth_l1(target, pred))


def mrcnn_class_loss_graph(target_class_ids: tf.Tensor, pred_class_logits: tf.Tensor,
                           active_class_ids: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of the ROI classifier (Matterport's definition).

    target_class_ids: [B, R] int (zero-padded ROIs count as background, as in Matterport).
    pred_class_logits: [B, R, C]. active_class_ids: [B, C], 1 for classes of the image's source
    data set; a ROI whose PREDICTED class is inactive is not scored.
    Returns a float32 scalar: sum of scored CE / number scored, 0 when nothing is scored.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int32)
    logits = tf.cast(pred_class_logits, tf.float32)
    active = tf.cast(active_class_ids, tf.float32)
    pred_class_ids = tf.argmax(logits, axis=2, output_type=tf.int32)
    pred_active = tf.gather(active, pred_class_ids, batch_dims=1)  # [B, R]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids, logits=logits)
    return tf.math.divide_no_nan(tf.reduce_sum(ce * pred_active), tf.reduce_sum(pred_active))


def _positive_rois(target_class_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Flat indices and class ids of the ROIs with class > 0."""
    ids = tf.reshape(tf.cast(target_class_ids, tf.int32), [-1])
    index = tf.cast(tf.where(ids > 0)[:, 0], tf.int32)
    return index, tf.gather(ids, index)


def mrcnn_bbox_loss_graph(target_bbox: tf.Tensor, target_class_ids: tf.Tensor,
                          pred_bbox: tf.Tensor) -> tf.Tensor:
    """Smooth-L1 of the class-specific box deltas of the positive ROIs.

    target_bbox: [B, R, 4]. target_class_ids: [B, R] int. pred_bbox: [B, R, C, 4]; the deltas of
    each ROI's TRUE class are scored. Returns a float32 scalar, 0 with no positive ROI.
    """
    index, class_ids = _positive_rois(target_class_ids)
    pred_bbox = tf.cast(pred_bbox, tf.float32)
    num_classes = tf.shape(pred_bbox)[2]
    pred = tf.gather_nd(tf.reshape(pred_bbox, [-1, num_classes, 4]),
                        tf.stack([index, class_ids], axis=1))
    target = tf.gather(tf.reshape(tf.cast(target_bbox, tf.float32), [-1, 4]), index)
    return _mean_or_zero(smooth_l1(target, pred))


def mrcnn_mask_loss_graph(target_masks: tf.Tensor, target_class_ids: tf.Tensor,
                          pred_masks: tf.Tensor) -> tf.Tensor:
    """Per-pixel binary cross-entropy of the true-class mask of the positive ROIs.

    target_masks: [B, R, h, w] in [0, 1]. target_class_ids: [B, R] int.
    pred_masks: [B, R, h, w, C] sigmoid probabilities. Returns a float32 scalar (mean over the
    pixels of positive ROIs), 0 with no positive ROI.
    """
    index, class_ids = _positive_rois(target_class_ids)
    pred_masks = tf.cast(pred_masks, tf.float32)
    shape = tf.shape(pred_masks)
    pred = tf.transpose(tf.reshape(pred_masks, [-1, shape[2], shape[3], shape[4]]), [0, 3, 1, 2])
    pred = tf.gather_nd(pred, tf.stack([index, class_ids], axis=1))
    mask_shape = tf.shape(target_masks)
    target = tf.gather(tf.reshape(tf.cast(target_masks, tf.float32),
                                  [-1, mask_shape[2], mask_shape[3]]), index)
    eps = keras.backend.epsilon()
    pred = tf.clip_by_value(pred, eps, 1.0 - eps)
    bce = -(target * tf.math.log(pred) + (1.0 - target) * tf.math.log(1.0 - pred))
    return _mean_or_zero(bce)


def image_class_loss_graph(image_class: tf.Tensor, image_logits: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy of the image-level classifier.

    image_class: [B] int, the class of each image, -1 (any negative) = unknown, not scored.
    image_logits: [B, K]. Returns a float32 scalar: mean CE over the known images, 0 if none.
    """
    image_class = tf.reshape(tf.cast(image_class, tf.int32), [-1])
    known = image_class >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.boolean_mask(image_class, known),
        logits=tf.boolean_mask(tf.cast(image_logits, tf.float32), known))
    return _mean_or_zero(ce)


class _LossLayer(keras.layers.Layer):
    """A layer wrapping one loss function; called with a list in Matterport's argument order.

    Output: a float32 scalar tensor, shape ``()`` (one value for the whole per-replica batch).
    """

    _fn = None  # set by subclasses
    _arity = 0

    def __init__(self, name: str | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.supports_jit = False

    def call(self, inputs):
        if len(inputs) != self._arity:
            raise ValueError(f"{type(self).__name__} takes {self._arity} inputs, got {len(inputs)}")
        return type(self)._fn(*inputs)

    def compute_output_shape(self, input_shape):
        return ()


class RpnClassLoss(_LossLayer):
    """``rpn_class_loss([input_rpn_match, rpn_class_logits])`` -> scalar; see rpn_class_loss_graph."""

    _fn = staticmethod(rpn_class_loss_graph)
    _arity = 2


class RpnBboxLoss(_LossLayer):
    """``rpn_bbox_loss([input_rpn_bbox, input_rpn_match, rpn_bbox])`` -> scalar."""

    _fn = staticmethod(rpn_bbox_loss_graph)
    _arity = 3


class MrcnnClassLoss(_LossLayer):
    """``mrcnn_class_loss([target_class_ids, mrcnn_class_logits, active_class_ids])`` -> scalar."""

    _fn = staticmethod(mrcnn_class_loss_graph)
    _arity = 3


class MrcnnBboxLoss(_LossLayer):
    """``mrcnn_bbox_loss([target_bbox, target_class_ids, mrcnn_bbox])`` -> scalar."""

    _fn = staticmethod(mrcnn_bbox_loss_graph)
    _arity = 3


class MrcnnMaskLoss(_LossLayer):
    """``mrcnn_mask_loss([target_mask, target_class_ids, mrcnn_mask])`` -> scalar."""

    _fn = staticmethod(mrcnn_mask_loss_graph)
    _arity = 3


def _flat_mask_loss(target_masks, target_class_ids, pred_masks):
    return mrcnn_mask_loss_graph(target_masks[None], target_class_ids[None], pred_masks[None])


class MrcnnMaskLossRows(_LossLayer):
    """The mask loss on flat ROI rows: ``([target_mask [K, h, w], class_ids [K], mrcnn_mask
    [K, h, w, C]])`` -> scalar; rows with class 0 are ignored, as in MrcnnMaskLoss."""

    _fn = staticmethod(_flat_mask_loss)
    _arity = 3


class ImageClassLoss(_LossLayer):
    """``kit_image_class_loss([input_image_class, kit_image_logits])`` -> scalar."""

    _fn = staticmethod(image_class_loss_graph)
    _arity = 2
