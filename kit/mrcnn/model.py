"""MaskRCNN: assembles backbone -> FPN -> RPN -> proposals -> heads, and runs detection.

``MaskRCNN(mode, config, model_dir)`` keeps Matterport's API (detect, load_weights, find_last,
set_trainable, train). The graph is built for the fixed molded image size config.IMAGE_SHAPE;
anchors are a graph constant. Training losses come from kit.mrcnn.losses and the training
loop from kit.mrcnn.training.

Additions to Matterport (all off by default): config.IMAGE_CLASSES > 0 adds an image-level
classifier on the FPN maps P2..P5 (layers kit_image_*, training input ``input_image_class``, loss
``kit_image_class_loss``, inference output ``kit_image_probs``, ``detect()`` key
``image_probs``); config.PROPOSALS_WITH_GT adds the GT boxes to the sampled proposals;
config.SEED seeds the ROI sampling (see kit.mrcnn.targets).
"""
from __future__ import annotations

import datetime
import logging
import os
import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from kit.mrcnn import molding, utils, weights
from kit.mrcnn.backbone import fpn_graph, resnet_graph
from kit.mrcnn.config import IMAGE_CLASS_LOSS, Config
from kit.mrcnn.data import IMAGE_CLASS_INPUT
from kit.mrcnn.heads import (build_fpn_mask_graph, build_rpn_model, fpn_classifier_graph,
                             image_class_graph)
from kit.mrcnn.layers import (AnchorsLayer, DetectionLayer, FirstROIs, NormBoxes,
                              ParseImageMeta, PositiveRows, ProposalLayer)
from kit.mrcnn.targets import DetectionTargetLayer

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"mask_rcnn_(?P<name>[\w-]+)_(?P<epoch>\d{4})\.h5$")


def default_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy when more than one GPU is visible, else the default strategy."""
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class SliceBoxes(KL.Layer):
    """Detections [B, N, 6] -> their boxes [B, N, 4] (normalised y1x1y2x2)."""

    def call(self, inputs):
        return inputs[..., :4]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 4)


def _pyramid(config: Config, input_image) -> tuple[list, list]:
    """Backbone + FPN: (RPN feature maps P2..P6, head feature maps P2..P5)."""
    _, c2, c3, c4, c5 = resnet_graph(input_image, config.BACKBONE, train_bn=config.TRAIN_BN,
                                     bn_momentum=config.BN_MOMENTUM)
    p = fpn_graph(c2, c3, c4, c5, config.TOP_DOWN_PYRAMID_SIZE)
    return p, p[:4]


def _rpn(config: Config, rpn_maps: list) -> tuple:
    """Shared RPN over every level -> (rpn_class_logits, rpn_class, rpn_bbox) [B, A, ...]."""
    rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                          config.TOP_DOWN_PYRAMID_SIZE)
    per_level = [rpn(p) for p in rpn_maps]
    names = ("rpn_class_logits", "rpn_class", "rpn_bbox")
    return tuple(KL.Concatenate(axis=1, name=n)([lv[i] for lv in per_level])
                 for i, n in enumerate(names))


def build_graph(mode: str, config: Config) -> tuple[list, list]:
    """Keras inputs and outputs of the training or inference graph."""
    h, w, c = (int(v) for v in config.IMAGE_SHAPE)
    input_image = KL.Input(shape=[h, w, c], name="input_image")
    input_image_meta = KL.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta")
    rpn_maps, head_maps = _pyramid(config, input_image)
    image_logits, image_probs = (image_class_graph(head_maps, config.IMAGE_CLASSES)
                                 if config.IMAGE_CLASSES else (None, None))
    rpn_class_logits, rpn_class, rpn_bbox = _rpn(config, rpn_maps)
    anchors = AnchorsLayer(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                           config.BACKBONE_SHAPES, config.BACKBONE_STRIDES,
                           config.RPN_ANCHOR_STRIDE, config.IMAGE_SHAPE, name="anchors")(input_image)
    training = mode == "training"
    rpn_rois = ProposalLayer(
        config.POST_NMS_ROIS_TRAINING if training else config.POST_NMS_ROIS_INFERENCE,
        config.RPN_NMS_THRESHOLD, config.PRE_NMS_LIMIT, config.RPN_BBOX_STD_DEV,
        name="ROI")([rpn_class, rpn_bbox, anchors])
    heads = dict(feature_maps=head_maps, image_meta=input_image_meta,
                 num_classes=config.NUM_CLASSES, train_bn=config.TRAIN_BN,
                 bn_momentum=config.BN_MOMENTUM)
    if not training:
        logits, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(
            rpn_rois, pool_size=config.POOL_SIZE, num_rois=config.POST_NMS_ROIS_INFERENCE,
            fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE, **heads)
        detections = DetectionLayer(
            config.DETECTION_MAX_INSTANCES, config.DETECTION_MIN_CONFIDENCE,
            config.DETECTION_NMS_THRESHOLD, config.BBOX_STD_DEV,
            best_foreground=config.DETECTION_BEST_FOREGROUND, name="mrcnn_detection")(
            [rpn_rois, mrcnn_class, mrcnn_bbox, input_image_meta])
        mrcnn_mask = build_fpn_mask_graph(
            SliceBoxes(name="detection_boxes")(detections), pool_size=config.MASK_POOL_SIZE,
            num_rois=config.DETECTION_MAX_INSTANCES, **heads)
        outputs = [detections, mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois, rpn_class, rpn_bbox]
        if image_probs is not None:
            outputs.append(image_probs)
        return [input_image, input_image_meta], outputs

    from kit.mrcnn import losses as L

    if not config.USE_RPN_ROIS:
        raise ValueError("USE_RPN_ROIS=False (externally fed ROIs) is not supported")
    mask_shape = config.MINI_MASK_SHAPE if config.USE_MINI_MASK else (h, w)
    inputs = [input_image, input_image_meta,
              KL.Input([len(anchors_of(config)), 1], name="input_rpn_match", dtype="int32"),
              KL.Input([config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4], name="input_rpn_bbox"),
              KL.Input([config.MAX_GT_INSTANCES], name="input_gt_class_ids", dtype="int32"),
              KL.Input([config.MAX_GT_INSTANCES, 4], name="input_gt_boxes"),
              KL.Input([*mask_shape, config.MAX_GT_INSTANCES], name="input_gt_masks",
                       dtype="bool")]
    _, _, input_rpn_match, input_rpn_bbox, gt_class_ids, gt_boxes, gt_masks = inputs
    if config.IMAGE_CLASSES:
        inputs.append(KL.Input([], name=IMAGE_CLASS_INPUT, dtype="int32"))
    active_class_ids = ParseImageMeta("active_class_ids", name="active_class_ids")(
        input_image_meta)
    gt_boxes = NormBoxes(h, w, name="norm_gt_boxes")(gt_boxes)
    empty_negatives = (int(config.TRAIN_ROIS_PER_IMAGE * (1 - config.ROI_POSITIVE_RATIO))
                       if config.TRAIN_ON_EMPTY_IMAGES else 0)
    rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(
        config.TRAIN_ROIS_PER_IMAGE, config.ROI_POSITIVE_RATIO, config.BBOX_STD_DEV,
        config.MASK_SHAPE, config.USE_MINI_MASK, empty_negatives,
        proposals_with_gt=config.PROPOSALS_WITH_GT, seed=config.SEED, name="proposal_targets")(
        [rpn_rois, gt_class_ids, gt_boxes, gt_masks])
    logits, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(
        rois, pool_size=config.POOL_SIZE, num_rois=config.TRAIN_ROIS_PER_IMAGE,
        fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE, **heads)
    # Only positive ROIs have mask targets, and they come first (at most MAX_POSITIVE_ROIS):
    # the mask head runs on those rows alone. Matterport ran it on all TRAIN_ROIS_PER_IMAGE;
    # the loss is the same, the work a fraction (measured in bench/compare.py).
    n_pos = config.MAX_POSITIVE_ROIS
    mask_rois, mask_class_ids, target_mask = (
        FirstROIs(n_pos, name=f"mask_{name}")(t) for name, t in
        (("rois", rois), ("class_ids", target_class_ids), ("targets", target_mask)))
    mrcnn_mask = build_fpn_mask_graph(mask_rois, pool_size=config.MASK_POOL_SIZE,
                                      num_rois=n_pos, class_ids=mask_class_ids, **heads)
    target_mask = PositiveRows(name="mask_target_rows")([target_mask, mask_class_ids])
    mask_class_ids = PositiveRows(name="mask_class_id_rows")([mask_class_ids, mask_class_ids])
    losses = [
        L.RpnClassLoss(name="rpn_class_loss")([input_rpn_match, rpn_class_logits]),
        L.RpnBboxLoss(name="rpn_bbox_loss")([input_rpn_bbox, input_rpn_match, rpn_bbox]),
        L.MrcnnClassLoss(name="mrcnn_class_loss")([target_class_ids, logits, active_class_ids]),
        L.MrcnnBboxLoss(name="mrcnn_bbox_loss")([target_bbox, target_class_ids, mrcnn_bbox]),
        L.MrcnnMaskLossRows(name="mrcnn_mask_loss")([target_mask, mask_class_ids, mrcnn_mask])]
    outputs = [rpn_class_logits, rpn_class, rpn_bbox, logits, mrcnn_class, mrcnn_bbox,
               mrcnn_mask, rpn_rois, rois]
    if config.IMAGE_CLASSES:
        losses.append(L.ImageClassLoss(name=IMAGE_CLASS_LOSS)([inputs[-1], image_logits]))
        outputs.append(image_logits)
    outputs += losses   # last, in config.TRAINING_LOSS_WEIGHTS order
    return inputs, outputs


def anchors_of(config: Config) -> np.ndarray:
    """(A, 4) pixel y1x1y2x2 anchors of the molded image, in the RPN's output order."""
    return utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                                          config.BACKBONE_SHAPES, config.BACKBONE_STRIDES,
                                          config.RPN_ANCHOR_STRIDE)


def walk_layers(model: keras.Model):
    """Every layer, recursing into nested models (rpn_model)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer)


class MaskRCNN:
    """Matterport-compatible Mask R-CNN on Keras 3 (TensorFlow backend)."""

    def __init__(self, mode: str, config: Config, model_dir: str | os.PathLike,
                 strategy: tf.distribute.Strategy | None = None):
        if mode not in ("training", "inference"):
            raise ValueError(f"mode {mode!r}: choose 'training' or 'inference'")
        self.mode, self.config = mode, config.validate()
        self.model_dir = str(model_dir)
        self.strategy = strategy or default_strategy()
        self.epoch = 0
        self.compiled_for: str | None = None   # the trainable-layers regex of the last compile
        self.set_log_dir()
        policy = keras.config.dtype_policy()
        if config.MIXED_PRECISION:   # conv/dense layers in float16; graph layers stay float32
            keras.config.set_dtype_policy("mixed_float16")
        try:
            with self.strategy.scope():
                self._build(mode, config)
        finally:
            keras.config.set_dtype_policy(policy)

    def _build(self, mode: str, config: Config) -> None:
        inputs, outputs = build_graph(mode, config)
        if mode == "training":
            from kit.mrcnn.training import TrainingModel

            weights = config.TRAINING_LOSS_WEIGHTS
            self.keras_model = TrainingModel(
                inputs=inputs, outputs=outputs, loss_names=tuple(weights),
                loss_weights=weights, weight_decay=config.WEIGHT_DECAY, name="mask_rcnn")
        else:
            self.keras_model = keras.Model(inputs, outputs, name="mask_rcnn")
            box_outputs = [outputs[0]] + outputs[7:]     # detections (+ kit_image_probs)
            self._box_model = keras.Model(inputs, box_outputs, name="mask_rcnn_boxes")
            self._run_full = tf.function(lambda x: self.keras_model(x, training=False))
            self._run_boxes = tf.function(lambda x: self._box_model(x, training=False))

    # ------------------------------------------------------------------ logs and weights
    def set_log_dir(self, model_path: str | os.PathLike | None = None) -> None:
        """Pick log_dir/checkpoint_path; from a checkpoint of ours, resume in its folder.

        ``mask_rcnn_<name>_<epoch:04d>.h5`` sets self.epoch to that (finished) epoch, so
        training continues at epoch + 1 and writes next to it. Anything else (COCO, ImageNet,
        None) starts a new folder model_dir/<name><YYYYmmddTHHMM> at epoch 0.
        """
        self.epoch = 0
        name = (self.config.NAME or "mrcnn").lower()
        match = CHECKPOINT_RE.search(str(model_path)) if model_path else None
        if match:
            self.epoch = int(match.group("epoch"))
            self.log_dir = str(Path(model_path).resolve().parent)
        else:
            now = datetime.datetime.now()
            self.log_dir = os.path.join(self.model_dir, f"{name}{now:%Y%m%dT%H%M}")
        self.checkpoint_path = os.path.join(self.log_dir, f"mask_rcnn_{name}_{{epoch:04d}}.h5")

    def find_last(self) -> str:
        """Newest checkpoint of this config's NAME under model_dir."""
        name = (self.config.NAME or "mrcnn").lower()
        root = Path(self.model_dir)
        dirs = sorted(d for d in root.glob(f"{name}*") if d.is_dir()) if root.is_dir() else []
        for folder in reversed(dirs):
            found = sorted(folder.glob(f"mask_rcnn_{name}_*.h5"))
            if found:
                return str(found[-1])
        raise FileNotFoundError(f"no checkpoint mask_rcnn_{name}_*.h5 in any {name}* folder "
                                f"of {root}: train first or give a weights file")

    def load_weights(self, path: str | os.PathLike, by_name: bool = True,
                     exclude: list[str] | None = None) -> dict:
        """Load a legacy Keras-2 HDF5 file (COCO, ImageNet, our checkpoints); returns the report."""
        report = weights.load_weights(self.keras_model, path, by_name=by_name, exclude=exclude)
        self.set_log_dir(path)
        return report

    def set_trainable(self, layer_regex: str, verbose: int = 0) -> None:
        """Layers whose name fully matches ``layer_regex`` train; the rest freeze.

        Recurses into nested models (rpn_model). Frozen BatchNorm (TRAIN_BN=False) keeps its
        moving statistics whatever this says; its gamma/beta follow the regex.
        """
        self.compiled_for = None      # the next train() compiles (and traces) again
        self.keras_model.trainable = True
        for layer in walk_layers(self.keras_model):
            if isinstance(layer, keras.Model):
                layer.trainable = True
                continue
            if not layer.weights:
                continue
            layer.trainable = bool(re.fullmatch(layer_regex, layer.name))
            if verbose > 0 and layer.trainable:
                log.info("trainable: %-20s (%s)", layer.name, type(layer).__name__)
        for layer in walk_layers(self.keras_model):   # a container with no trainable layer inside
            if isinstance(layer, keras.Model):
                inner = [sub for sub in walk_layers(layer) if sub.weights and sub.trainable]
                if not inner:
                    layer.trainable = False

    def get_trainable_layers(self) -> list:
        """Layers with weights that will train (nested models expanded)."""
        return [layer for layer in walk_layers(self.keras_model)
                if not isinstance(layer, keras.Model) and layer.weights and layer.trainable]

    def train(self, train_dataset: utils.Dataset, val_dataset: utils.Dataset,
              learning_rate: float, epochs: int, layers: str, augmentation: Any = None,
              custom_callbacks: list | None = None, workers: int = 1) -> Any:
        """Train up to (cumulative) ``epochs``; see kit.mrcnn.training.train."""
        if self.mode != "training":
            raise ValueError("train() needs a model built with mode='training'")
        from kit.mrcnn.training import train

        return train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
                     augmentation=augmentation, custom_callbacks=custom_callbacks,
                     workers=workers)

    # ------------------------------------------------------------------------ detection
    def detect(self, images: list[np.ndarray], verbose: int = 0,
               masks: bool = True) -> list[dict[str, np.ndarray]]:
        """Detect objects in any number of HxWx3 images (run in batches of BATCH_SIZE).

        Returns one dict per image: ``rois`` int32 (N, 4) y1x1y2x2 in ORIGINAL image pixels,
        ``class_ids`` int32 (N,), ``scores`` float32 (N,), ``masks`` bool (H, W, N) of the
        original image, or None when ``masks=False`` (the mask head is then not run at all).
        With config.IMAGE_CLASSES > 0 also ``image_probs`` float32 (IMAGE_CLASSES,): the image
        classifier's softmax (sums to 1; absent otherwise).
        """
        if self.mode != "inference":
            raise ValueError("detect() needs a model built with mode='inference'")
        results: list[dict[str, np.ndarray]] = []
        batch = self.config.BATCH_SIZE
        shape = tuple(int(v) for v in self.config.IMAGE_SHAPE)
        for start in range(0, len(images), batch):
            chunk = list(images[start:start + batch])
            molded, metas, windows = molding.mold_inputs(chunk, self.config)
            if molded.shape[1:] != shape:
                raise ValueError(f"molded images are {molded.shape[1:]}, the graph expects "
                                 f"{shape}: use IMAGE_RESIZE_MODE 'square' or images of that size")
            pad = batch - len(chunk)
            if pad:
                molded = np.concatenate([molded, np.zeros((pad, *shape), np.float32)])
                metas = np.concatenate([metas, np.repeat(metas[-1:], pad, axis=0)])
            if verbose:
                log.info("detect: images %d..%d of %d", start, start + len(chunk), len(images))
            inputs = [tf.constant(molded), tf.constant(metas)]
            if masks:
                out = self._run_full(inputs)
                detections, mrcnn_mask, extra = out[0].numpy(), out[3].numpy(), out[7:]
            else:
                out = self._run_boxes(inputs)       # one output comes back bare
                out = list(out) if isinstance(out, (list, tuple)) else [out]
                detections, mrcnn_mask, extra = out[0].numpy(), None, out[1:]
            probs = extra[0].numpy().astype(np.float32) if extra else None
            for i, image in enumerate(chunk):
                result = molding.unmold_detections(
                    detections[i], None if mrcnn_mask is None else mrcnn_mask[i],
                    image.shape, shape, windows[i])
                if probs is not None:
                    result["image_probs"] = probs[i]
                results.append(result)
        return results

