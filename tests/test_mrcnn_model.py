"""MaskRCNN assembly: inference/training graphs at 128 px, detect(), anchors vs RPN order."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kit.mrcnn import molding, utils
from kit.mrcnn.config import Config
from kit.mrcnn.heads import build_rpn_model
from kit.mrcnn.layers import AnchorsLayer, ProposalLayer
from kit.mrcnn.model import MaskRCNN, anchors_of


class Tiny(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    BACKBONE = "resnet50"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGES_PER_GPU = 2
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    PRE_NMS_LIMIT = 500
    POST_NMS_ROIS_INFERENCE = 32
    POST_NMS_ROIS_TRAINING = 32
    TRAIN_ROIS_PER_IMAGE = 8
    RPN_TRAIN_ANCHORS_PER_IMAGE = 16
    MAX_GT_INSTANCES = 3
    DETECTION_MAX_INSTANCES = 4
    MINI_MASK_SHAPE = (16, 16)
    FPN_CLASSIF_FC_LAYERS_SIZE = 64


@pytest.fixture(scope="module")
def inference(tmp_path_factory) -> MaskRCNN:
    return MaskRCNN("inference", Tiny(), tmp_path_factory.mktemp("models"))


def _layer(model: keras.Model, name: str):
    return model.get_layer(name)


def test_inference_graph_names_and_outputs(inference):
    km = inference.keras_model
    names = {layer.name for layer in km.layers}
    assert {"conv1", "bn_conv1", "res4f_branch2c", "fpn_p6", "rpn_model", "mrcnn_class_conv1",
            "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask_deconv", "mrcnn_mask"} <= names
    assert "res4g_branch2a" not in names                      # ResNet50: stage 4 is a..f
    rpn = _layer(km, "rpn_model")
    assert [layer.name for layer in rpn.layers if layer.weights] == [
        "rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"]
    assert tuple(km.outputs[0].shape) == (None, Tiny.DETECTION_MAX_INSTANCES, 6)
    assert tuple(km.outputs[3].shape)[1:] == (Tiny.DETECTION_MAX_INSTANCES, 28, 28, 2)


def test_detect_blank_image_returns_typed_empty_arrays(inference):
    logits = _layer(inference.keras_model, "mrcnn_class_logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([np.zeros_like(kernel), np.array([10.0, -10.0], np.float32)])
    try:
        results = inference.detect([np.zeros((100, 128, 3), np.uint8)] * 3)
    finally:
        logits.set_weights([kernel, bias])
    assert len(results) == 3                       # 2 batches of BATCH_SIZE 2, last padded
    r = results[0]
    assert r["rois"].shape == (0, 4) and r["rois"].dtype == np.int32
    assert r["class_ids"].shape == (0,) and r["class_ids"].dtype == np.int32
    assert r["scores"].shape == (0,) and r["scores"].dtype == np.float32
    assert r["masks"].shape == (100, 128, 0) and r["masks"].dtype == bool


def test_detect_batches_consistently_and_boxes_only(inference):
    logits = _layer(inference.keras_model, "mrcnn_class_logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([np.zeros_like(kernel), np.array([-10.0, 10.0], np.float32)])
    try:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        full = inference.detect([image, image, image])
        boxes = inference.detect([image], masks=False)
    finally:
        logits.set_weights([kernel, bias])
    assert len(full) == 3 and len(full[0]["rois"]) > 0     # every ROI is class 1 now
    for r in full[1:]:                                      # same image, same answer
        np.testing.assert_array_equal(r["rois"], full[0]["rois"])
    np.testing.assert_array_equal(boxes[0]["rois"], full[0]["rois"])
    np.testing.assert_allclose(boxes[0]["scores"], full[0]["scores"], rtol=1e-5)
    assert boxes[0]["masks"] is None
    assert full[0]["masks"].shape == (96, 128, len(full[0]["rois"]))
    rois = full[0]["rois"]
    assert (rois[:, 2] <= 96).all() and (rois[:, 3] <= 128).all() and (rois >= 0).all()


def test_anchor_order_matches_rpn_reshape():
    """A single hot logit at (level, row, col, ratio) + zero deltas -> that anchor first."""
    cfg = Tiny()
    rpn = build_rpn_model(1, 3, 4)
    shared, cls_raw, bbox = (rpn.get_layer(n) for n in
                             ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"))
    k = np.zeros((3, 3, 4, 512), np.float32)
    k[1, 1, 0, 0] = 1.0                               # shared channel 0 = input channel 0
    shared.set_weights([k, np.zeros(512, np.float32)])
    k = np.zeros((1, 1, 512, 6), np.float32)
    ratio = 2
    k[0, 0, 0, 2 * ratio + 1] = 10.0                  # foreground logit of that ratio
    cls_raw.set_weights([k, np.zeros(6, np.float32)])
    bbox.set_weights([np.zeros((1, 1, 512, 12), np.float32), np.zeros(12, np.float32)])
    level, row, col = 1, 5, 3                          # P3: 16x16 map, stride 8
    maps = [np.zeros((1, *s, 4), np.float32) for s in cfg.BACKBONE_SHAPES]
    maps[level][0, row, col, 0] = 1.0
    outs = [rpn(tf.constant(m)) for m in maps]
    probs = tf.concat([o[1] for o in outs], axis=1)
    deltas = tf.concat([o[2] for o in outs], axis=1)
    anchors = AnchorsLayer(cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS, cfg.BACKBONE_SHAPES,
                           cfg.BACKBONE_STRIDES, 1, cfg.IMAGE_SHAPE)(tf.zeros((1, 128, 128, 3)))
    first = ProposalLayer(5, 0.7, 500, cfg.RPN_BBOX_STD_DEV)([probs, deltas, anchors])[0, 0]
    px = anchors_of(cfg)
    index = int(sum(np.prod(s) * 3 for s in cfg.BACKBONE_SHAPES[:level])
                + (row * cfg.BACKBONE_SHAPES[level][1] + col) * 3 + ratio)
    expected = np.clip(utils.norm_boxes(px[index:index + 1], (128, 128))[0], 0, 1)
    np.testing.assert_allclose(first.numpy(), expected, atol=1e-6)
    y1, x1, y2, x2 = px[index]
    assert ((y1 + y2) / 2, (x1 + x2) / 2) == (pytest.approx(row * 8), pytest.approx(col * 8))
    assert (x2 - x1) / (y2 - y1) == pytest.approx(cfg.RPN_ANCHOR_RATIOS[ratio])


def test_set_trainable_heads_recurses_into_rpn(inference):
    inference.set_trainable(r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)")
    names = {layer.name for layer in inference.get_trainable_layers()}
    assert {"rpn_conv_shared", "rpn_bbox_pred", "fpn_c5p5", "mrcnn_mask", "mrcnn_class_bn1"} <= names
    assert not any(n.startswith(("res", "bn", "conv1")) for n in names)
    inference.set_trainable(".*")
    assert "res2a_branch2a" in {layer.name for layer in inference.get_trainable_layers()}


def test_log_dir_epoch_and_find_last(inference, tmp_path):
    inference.model_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        inference.find_last()
    run = tmp_path / "tiny20250101T1200"
    run.mkdir()
    for epoch in (1, 2):
        (run / f"mask_rcnn_tiny_{epoch:04d}.h5").write_bytes(b"")
    assert inference.find_last() == str(run / "mask_rcnn_tiny_0002.h5")
    inference.set_log_dir(run / "mask_rcnn_tiny_0002.h5")
    assert inference.epoch == 2 and inference.log_dir == str(run.resolve())
    assert inference.checkpoint_path.endswith("mask_rcnn_tiny_{epoch:04d}.h5")
    inference.set_log_dir("mask_rcnn_coco.h5")
    assert inference.epoch == 0 and inference.log_dir.startswith(str(tmp_path / "tiny"))


def test_checkpoint_round_trip_through_model(inference, tmp_path):
    from kit.mrcnn.weights import save_weights

    path = tmp_path / "tiny20250101T1200" / "mask_rcnn_tiny_0003.h5"
    save_weights(inference.keras_model, path)
    report = inference.load_weights(path, exclude=["mrcnn_mask"])
    assert report["excluded"] == ["mrcnn_mask"] and not report["shape_mismatch"]
    assert not report["missing_in_file"] and not report["missing_in_model"]
    assert "rpn_model" in report["loaded"] and inference.epoch == 3


def test_invalid_config_is_refused(tmp_path):
    cfg = Tiny()
    cfg.IMAGE_MAX_DIM = 100
    with pytest.raises(ValueError, match="divisible by 64"):
        MaskRCNN("inference", cfg, tmp_path)


def test_training_graph_forward_gives_five_finite_losses(tmp_path):
    pytest.importorskip("kit.mrcnn.training")
    from kit.mrcnn.losses import LOSS_NAMES

    cfg = Tiny()
    model = MaskRCNN("training", cfg, tmp_path)
    km = model.keras_model
    assert [t.name for t in km.inputs] == [
        "input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
        "input_gt_class_ids", "input_gt_boxes", "input_gt_masks"]
    b, a = cfg.BATCH_SIZE, len(anchors_of(cfg))
    rng = np.random.default_rng(0)
    meta = np.stack([molding.compose_image_meta(0, (128, 128, 3), (128, 128, 3), (0, 0, 128, 128),
                                              1.0, np.ones(2))] * b)
    x = {"input_image": rng.normal(size=(b, 128, 128, 3)).astype(np.float32),
         "input_image_meta": meta,
         "input_rpn_match": rng.choice([-1, 0, 1], (b, a, 1)).astype(np.int32),
         "input_rpn_bbox": rng.normal(0, 0.1, (b, 16, 4)).astype(np.float32),
         "input_gt_class_ids": np.array([[1, 0, 0], [0, 0, 0]], np.int32),  # image 2 empty
         "input_gt_boxes": np.array([[[10, 10, 60, 70], [0] * 4, [0] * 4], [[0] * 4] * 3],
                                    np.float32),
         "input_gt_masks": np.ones((b, 16, 16, 3), bool)}
    outputs = km(x, training=True)
    losses = [float(t) for t in outputs[-5:]]
    assert [t._keras_history.operation.name for t in km.outputs[-5:]] == list(LOSS_NAMES)
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[0] > 0                         # RPN class loss always scores anchors


@pytest.mark.slow
def test_resnet101_inference_graph_builds(tmp_path):
    cfg = Tiny()
    cfg.BACKBONE = "resnet101"
    model = MaskRCNN("inference", cfg, tmp_path)
    names = {layer.name for layer in model.keras_model.layers}
    assert {"res4w_branch2c", "bn4w_branch2c", "res5c_branch2c"} <= names
    assert "res4x_branch2a" not in names


def test_mixed_precision_builds_float16_convs_and_float32_boxes(tmp_path):
    cfg = Tiny()
    cfg.MIXED_PRECISION = True
    model = MaskRCNN("inference", cfg, tmp_path)
    assert keras.config.dtype_policy().name == "float32"        # global policy restored
    km = model.keras_model
    assert km.get_layer("conv1").compute_dtype == "float16"
    assert km.get_layer("mrcnn_detection").compute_dtype == "float32"
    result = model.detect([np.zeros((128, 128, 3), np.uint8)], masks=False)[0]
    assert result["rois"].dtype == np.int32 and result["scores"].dtype == np.float32
