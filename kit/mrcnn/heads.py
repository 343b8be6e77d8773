"""RPN, FPN classifier/box head and mask head with Matterport's layer names.

The per-ROI heads do not use TimeDistributed: ROIs are merged [B, N, ...] -> [B*N, ...], run
through plain Conv2D/BatchNorm/Dense layers named like Matterport's wrappers (same weights, so
mask_rcnn_coco.h5 loads) and split back, keeping the graph size independent of N.

The image-level classifier (``image_class_graph``) is the kit's own (Matterport has none); its
layers are named ``kit_image_*`` so no Matterport weight file ever holds them.
"""
from __future__ import annotations

import keras
from keras import layers as KL

from kit.mrcnn.backbone import BatchNorm
from kit.mrcnn.layers import MergeROIs, PositiveRows, PyramidROIAlign, SplitROIs


def build_rpn_model(anchor_stride: int, anchors_per_location: int, depth: int) -> keras.Model:
    """The shared RPN applied to every pyramid level, as a nested model named ``rpn_model``.

    Input: a feature map [B, h, w, depth]. Outputs: rpn_class_logits [B, h*w*k, 2],
    rpn_probs [B, h*w*k, 2], rpn_bbox [B, h*w*k, 4] (deltas / RPN_BBOX_STD_DEV), rows in
    (row, column, ratio) order, the order of utils.generate_anchors.
    """
    feature_map = KL.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    shared = KL.Conv2D(512, 3, padding="same", activation="relu", strides=anchor_stride,
                       name="rpn_conv_shared")(feature_map)
    x = KL.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw")(shared)
    logits = KL.Reshape((-1, 2))(x)
    probs = KL.Activation("softmax", name="rpn_class_probs")(logits)
    x = KL.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred")(shared)
    bbox = KL.Reshape((-1, 4))(x)
    return keras.Model(feature_map, [logits, probs, bbox], name="rpn_model")


def fpn_classifier_graph(rois, feature_maps: list, image_meta, pool_size: int,
                         num_classes: int, num_rois: int, train_bn: bool,
                         fc_layers_size: int = 1024, bn_momentum: float = 0.99):
    """Classifier and box regressor on ROIs [B, N, 4] (normalised).

    Returns mrcnn_class_logits [B, N, C], mrcnn_class [B, N, C] (softmax),
    mrcnn_bbox [B, N, C, 4] (deltas / BBOX_STD_DEV). ``num_rois`` is N.
    """
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_classifier")(
        [rois, image_meta, *feature_maps])
    x = MergeROIs(name="mrcnn_class_merge")(x)
    x = KL.Conv2D(fc_layers_size, pool_size, padding="valid", name="mrcnn_class_conv1")(x)
    x = KL.Activation("relu")(BatchNorm(train_bn, momentum=bn_momentum, name="mrcnn_class_bn1")(x))
    x = KL.Conv2D(fc_layers_size, 1, name="mrcnn_class_conv2")(x)
    x = KL.Activation("relu")(BatchNorm(train_bn, momentum=bn_momentum, name="mrcnn_class_bn2")(x))
    shared = KL.Reshape((fc_layers_size,), name="pool_squeeze")(x)
    logits = KL.Dense(num_classes, name="mrcnn_class_logits")(shared)
    probs = KL.Activation("softmax", name="mrcnn_class_softmax")(logits)
    bbox = KL.Dense(num_classes * 4, name="mrcnn_bbox_fc")(shared)
    bbox = KL.Reshape((num_classes, 4), name="mrcnn_bbox_reshape")(bbox)
    return (SplitROIs(num_rois, name="mrcnn_class_logits_split")(logits),
            SplitROIs(num_rois, name="mrcnn_class")(probs),
            SplitROIs(num_rois, name="mrcnn_bbox")(bbox))


def build_fpn_mask_graph(rois, feature_maps: list, image_meta, pool_size: int,
                         num_classes: int, num_rois: int, train_bn: bool,
                         bn_momentum: float = 0.99, class_ids=None):
    """Mask head on ROIs [B, N, 4] -> masks [B, N, 2*pool, 2*pool, C] (sigmoid).

    With ``class_ids`` [B, N] (training targets) it runs on the positive ROIs alone and returns
    their masks as flat rows [K, 2*pool, 2*pool, C] (see PositiveRows).
    """
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_mask")(
        [rois, image_meta, *feature_maps])
    if class_ids is None:
        x = MergeROIs(name="mrcnn_mask_merge")(x)
    else:
        x = PositiveRows(name="mrcnn_mask_positive")([x, class_ids])
    for i in range(1, 5):
        x = KL.Conv2D(256, 3, padding="same", name=f"mrcnn_mask_conv{i}")(x)
        x = KL.Activation("relu")(BatchNorm(train_bn, momentum=bn_momentum, name=f"mrcnn_mask_bn{i}")(x))
    x = KL.Conv2DTranspose(256, 2, strides=2, activation="relu", name="mrcnn_mask_deconv")(x)
    x = KL.Conv2D(num_classes, 1, activation="sigmoid", name="mrcnn_mask")(x)
    return x if class_ids is not None else SplitROIs(num_rois, name="mrcnn_mask_split")(x)


class StopGradient(KL.Layer):
    """Identity forward, no gradient backward."""

    def call(self, inputs):
        return keras.ops.stop_gradient(inputs)


def image_class_graph(feature_maps: list, num_classes: int, fc_size: int = 256) -> tuple:
    """Image-level classifier on the FPN maps P2..P5 [B, h, w, TOP_DOWN_PYRAMID_SIZE] each.

    Each level is global-average and global-max pooled, the pooled vectors are concatenated and
    stop-gradient'ed -> LayerNorm -> Dense(fc_size, leaky relu) -> Dense(num_classes). The head
    reads the features the detector trains (every level, so large and small findings count)
    without pushing gradients into them, and the normalised input keeps its logits small.

    Why FPN and not C5: on the CPU demo trained from scratch (128 px), a logistic regression on
    pooled C5 of a trained run separated opacity images no better than chance (val ROC AUC
    0.51-0.58 over 2 seeds), while pooled P2..P5 reached 0.84-1.00 (bench/image_features.py);
    a head on C5 stayed at chance. Max pooling with the backbone gradient blew the loss up to 1,000.
    Returns (kit_image_logits [B, K], kit_image_probs [B, K] float32 softmax). Layers:
    kit_image_avg_pN, kit_image_max_pN, kit_image_pool (concat), kit_image_stop,
    kit_image_norm, kit_image_fc, kit_image_logits, kit_image_probs.
    """
    pooled = []
    for level, fmap in enumerate(feature_maps, start=2):
        pooled.append(KL.GlobalAveragePooling2D(name=f"kit_image_avg_p{level}")(fmap))
        pooled.append(KL.GlobalMaxPooling2D(name=f"kit_image_max_p{level}")(fmap))
    x = KL.Concatenate(name="kit_image_pool")(pooled)
    x = StopGradient(name="kit_image_stop")(x)
    x = KL.LayerNormalization(name="kit_image_norm")(x)
    x = KL.Dense(fc_size, activation="leaky_relu", name="kit_image_fc")(x)
    logits = KL.Dense(num_classes, name="kit_image_logits")(x)
    probs = KL.Activation("softmax", dtype="float32", name="kit_image_probs")(logits)
    return logits, probs
