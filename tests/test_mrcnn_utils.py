"""kit.mrcnn.config and kit.mrcnn.utils: pure numpy, hand-checked values."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kit.mrcnn import molding, utils
from kit.mrcnn.config import Config


class Tiny(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGES_PER_GPU = 3


def _config(side: int) -> Config:
    cfg = Tiny()
    cfg.IMAGE_MIN_DIM = cfg.IMAGE_MAX_DIM = side
    return cfg


# ---------------------------------------------------------------------------------- config
def test_derived_values_follow_fields():
    cfg = Tiny()
    assert cfg.BATCH_SIZE == 3
    assert cfg.IMAGE_SHAPE.tolist() == [128, 128, 3]
    assert cfg.IMAGE_META_SIZE == 1 + 3 + 3 + 4 + 1 + 2
    assert cfg.BACKBONE_SHAPES.tolist() == [[32, 32], [16, 16], [8, 8], [4, 4], [2, 2]]
    cfg.GPU_COUNT = 2
    assert cfg.BATCH_SIZE == 6
    cfg.TRAIN_ROIS_PER_IMAGE, cfg.ROI_POSITIVE_RATIO = 200, 0.33
    assert cfg.MAX_POSITIVE_ROIS == 66            # int(200 * 0.33), as DetectionTargetLayer


@pytest.mark.parametrize("field,value,words", [
    ("IMAGE_MAX_DIM", 100, "divisible by 64"),
    ("NUM_CLASSES", 1, "NUM_CLASSES"),
    ("RPN_ANCHOR_SCALES", (32, 64, 128), "one anchor scale per level"),
    ("BACKBONE", "vgg", "BACKBONE"),
    ("OPTIMIZER", "rmsprop", "OPTIMIZER"),
])
def test_validate_rejects(field, value, words):
    cfg = Tiny()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=words):
        cfg.validate()


def test_config_json_round_trip():
    cfg = Tiny()
    cfg.RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    cfg.MEAN_PIXEL = np.array([1.0, 2.0, 3.0])
    data = json.loads(json.dumps(cfg.to_dict()))
    back = Config.from_dict(data)
    assert back.to_dict() == cfg.to_dict()
    assert back.RPN_ANCHOR_SCALES == (8, 16, 32, 64, 128)
    assert isinstance(back.MEAN_PIXEL, np.ndarray) and back.MEAN_PIXEL.tolist() == [1, 2, 3]
    assert back.BATCH_SIZE == 3 and "BATCH_SIZE" not in data
    derived = {n for n, v in vars(Config).items() if isinstance(v, property)}
    assert derived and not derived & set(data)       # every property stays out of the JSON
    assert set(Config.derived_names()) == derived and "MAX_POSITIVE_ROIS" in derived
    with pytest.raises(ValueError, match="NOT_A_FIELD"):
        Config.from_dict({"NOT_A_FIELD": 1})


def test_display_lists_fields_and_derived(capsys):
    text = Tiny().display()
    assert "IMAGE_META_SIZE" in text and "NUM_CLASSES" in text
    assert text in capsys.readouterr().out


# --------------------------------------------------------------------------------- anchors
@pytest.mark.parametrize("side,count", [(1024, 261_888), (256, 16_368), (128, 4_092)])
def test_anchor_counts(side, count):
    cfg = _config(side)
    anchors = utils.generate_pyramid_anchors(cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS,
                                             cfg.BACKBONE_SHAPES, cfg.BACKBONE_STRIDES, 1)
    assert anchors.shape == (count, 4)


def test_anchor_order_row_col_ratio():
    a = utils.generate_anchors(32, [0.5, 1, 2], (2, 3), 8, 1)
    assert a.shape == (18, 4)
    # index = (row * cols + col) * ratios + ratio ; centre = (row, col) * stride
    k = (1 * 3 + 2) * 3 + 2
    cy, cx = (a[k, 0] + a[k, 2]) / 2, (a[k, 1] + a[k, 3]) / 2
    h, w = a[k, 2] - a[k, 0], a[k, 3] - a[k, 1]
    assert (cy, cx) == (pytest.approx(8.0), pytest.approx(16.0))
    assert w / h == pytest.approx(2.0) and h * w == pytest.approx(32 * 32)
    with pytest.raises(ValueError, match="one anchor scale per pyramid level"):
        utils.generate_pyramid_anchors([32, 64], [1], np.array([[4, 4]]), [4], 1)


# ---------------------------------------------------------------------------- box geometry
def test_iou_hand_value_and_brute_force():
    assert utils.compute_overlaps([[0, 0, 10, 10]], [[5, 5, 15, 15]])[0, 0] == pytest.approx(1 / 7)
    rng = np.random.default_rng(0)

    def random_boxes(n):
        ys, xs = np.sort(rng.integers(0, 20, (n, 2)), 1), np.sort(rng.integers(0, 20, (n, 2)), 1)
        return np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=1)

    b1, b2 = random_boxes(6), random_boxes(5)
    iou = utils.compute_overlaps(b1, b2)
    for i, a in enumerate(b1):       # brute force on the integer pixel grid
        for j, b in enumerate(b2):
            ga = np.zeros((20, 20), bool)
            gb = np.zeros((20, 20), bool)
            ga[a[0]:a[2], a[1]:a[3]] = True
            gb[b[0]:b[2], b[1]:b[3]] = True
            union = (ga | gb).sum()
            assert iou[i, j] == pytest.approx((ga & gb).sum() / union if union else 0.0)


def test_delta_round_trip():
    rng = np.random.default_rng(1)
    boxes = np.array([[10, 20, 50, 40], [0, 0, 5, 100], [3, 4, 9, 12]], float)
    gt = boxes + rng.uniform(-2, 2, boxes.shape)
    deltas = utils.box_refinement(boxes, gt)
    np.testing.assert_allclose(utils.apply_box_deltas(boxes, deltas), gt, atol=1e-9)
    np.testing.assert_allclose(utils.box_refinement(boxes, boxes), 0, atol=1e-12)
    # hand value: same centre, double height -> dh = log 2
    d = utils.box_refinement(np.array([[0, 0, 10, 10]]), np.array([[-5, 0, 15, 10]]))
    np.testing.assert_allclose(d, [[0, 0, np.log(2), 0]])


def test_non_max_suppression_hand_case():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.1])
    keep = utils.non_max_suppression(boxes, scores, 0.5)
    # box 0 vs box 1: IoU = 81/119 = 0.68 -> suppressed; box 3 vs box 1: IoU = 72/(90+100-72) = 0.61 -> suppressed
    assert keep.tolist() == [1, 2]
    assert keep.dtype == np.int32
    assert utils.non_max_suppression(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_box_format_conversions():
    xywh = np.array([[10, 20, 30, 40]])
    yxyx = utils.convert_boxes(xywh, "xywh", "y1x1y2x2")
    assert yxyx.tolist() == [[20, 10, 60, 40]]
    assert utils.convert_boxes(yxyx, "y1x1y2x2", "x1y1x2y2").tolist() == [[10, 20, 40, 60]]
    assert utils.convert_boxes(yxyx, "y1x1y2x2", "xywh").tolist() == xywh.tolist()
    with pytest.raises(ValueError, match="unknown box format"):
        utils.convert_boxes(xywh, "xyxy", "xywh")


def test_norm_denorm_round_trip():
    boxes = np.array([[0, 0, 128, 128], [10, 20, 64, 100]])
    norm = utils.norm_boxes(boxes, (128, 128))
    np.testing.assert_allclose(norm[0], [0, 0, 1, 1])
    assert utils.denorm_boxes(norm, (128, 128)).tolist() == boxes.tolist()


# ------------------------------------------------------------------------ resize and masks
def test_resize_square_window_scale_padding():
    image = np.full((50, 100, 3), 7, np.uint8)
    out, window, scale, padding, crop = utils.resize_image(image, 64, 128, 0, "square")
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(1.28) and crop is None
    assert window == (32, 0, 96, 128)
    assert padding == [(32, 32), (0, 0), (0, 0)]
    assert (out[32:96] == 7).all() and (out[:32] == 0).all()
    mask = np.zeros((50, 100, 1), bool)
    mask[10:20, 30:50] = True
    resized = utils.resize_mask(mask, scale, padding)
    assert resized.shape == (128, 128, 1)
    box = utils.extract_bboxes(resized)[0]
    np.testing.assert_allclose(box, [32 + 12.8, 38.4, 32 + 25.6, 64], atol=1)


def test_resize_other_modes():
    image = np.ones((100, 70, 3), np.uint8)
    out, window, scale, _, _ = utils.resize_image(image, mode="none")
    assert out is image and window == (0, 0, 100, 70) and scale == 1
    out, window, _, padding, _ = utils.resize_image(image, min_dim=64, mode="pad64")
    assert out.shape == (128, 128, 3) and window == (14, 29, 114, 99)
    out, window, _, _, crop = utils.resize_image(image, min_dim=64, mode="crop",
                                                 rng=np.random.default_rng(0))
    assert out.shape == (64, 64, 3) and crop[2:] == (64, 64) and window == (0, 0, 64, 64)


def test_mini_mask_round_trip_and_bboxes():
    mask = np.zeros((64, 64, 2), bool)
    mask[10:30, 5:45, 0] = True
    mask[40:50, 40:60, 1] = True
    boxes = utils.extract_bboxes(mask)
    assert boxes.tolist() == [[10, 5, 30, 45], [40, 40, 50, 60]]
    mini = utils.minimize_mask(boxes, mask, (16, 16))
    assert mini.shape == (16, 16, 2) and mini.all()
    np.testing.assert_array_equal(utils.expand_mask(boxes, mini, (64, 64)), mask)
    full = utils.unmold_mask(np.ones((28, 28)) * 0.9, boxes[0], (64, 64))
    np.testing.assert_array_equal(full, mask[:, :, 0])


# ------------------------------------------------------------------------ molding and meta
def test_image_meta_round_trip():
    meta = molding.compose_image_meta(7, (100, 80, 3), (128, 128, 3), (14, 24, 114, 104), 1.0,
                                    np.array([1, 1]))
    assert meta.shape == (Tiny().IMAGE_META_SIZE,)
    parts = molding.parse_image_meta(meta[None])
    assert parts["image_id"].tolist() == [7]
    assert parts["original_image_shape"].tolist() == [[100, 80, 3]]
    assert parts["window"].tolist() == [[14, 24, 114, 104]]
    assert parts["active_class_ids"].tolist() == [[1, 1]]


def test_mold_inputs_and_unmold_detections():
    cfg = Tiny()
    image = np.full((64, 128, 3), 200, np.uint8)
    molded, metas, windows = molding.mold_inputs([image], cfg)
    assert molded.shape == (1, 128, 128, 3) and molded.dtype == np.float32
    assert windows.tolist() == [[32, 0, 96, 128]]
    np.testing.assert_allclose(molding.unmold_image(molded[0], cfg)[40, 5], [200, 200, 200])
    # a detection exactly covering the window maps to the whole original image
    window_norm = utils.norm_boxes(windows, (128, 128))[0]
    det = np.zeros((4, 6), np.float32)
    det[0] = [*window_norm, 1, 0.9]
    out = molding.unmold_detections(det, np.ones((4, 28, 28, 2), np.float32), image.shape,
                                  (128, 128, 3), windows[0])
    assert out["rois"].tolist() == [[0, 0, 64, 128]]
    assert out["class_ids"].tolist() == [1] and out["scores"].dtype == np.float32
    assert out["masks"].shape == (64, 128, 1) and out["masks"].all()
    np.testing.assert_allclose(out["boxes"], [[0, 0, 64, 128]], atol=1e-4)
    # a box between pixels: rois round it (Matterport), boxes keep it
    det[0] = [0.25, 0.1, 0.6, 0.7, 1, 0.8]
    out = molding.unmold_detections(det, None, (128, 128, 3), (128, 128, 3), (0, 0, 128, 128))
    exact = np.array([0.25 * 127, 0.1 * 127, 0.6 * 127 + 1, 0.7 * 127 + 1])
    np.testing.assert_allclose(out["boxes"][0], exact, rtol=1e-6)
    assert out["rois"][0].tolist() == np.around(exact).astype(int).tolist()
    assert np.abs(out["boxes"][0] - out["rois"][0]).max() > 0.1
    empty = molding.unmold_detections(np.zeros((4, 6), np.float32), None, image.shape,
                                    (128, 128, 3), windows[0])
    assert empty["rois"].shape == (0, 4) and empty["boxes"].shape == (0, 4)
    assert empty["masks"] is None


# --------------------------------------------------------------------------------- dataset
def test_dataset_api():
    ds = utils.Dataset()
    ds.add_class("rsna", 1, "Lung Opacity")
    ds.add_class("rsna", 1, "duplicate ignored")
    ds.add_image("rsna", image_id="p1", path="/x/p1.png", height=8, width=8)
    ds.add_image("rsna", image_id="p2", path="/x/p2.png", height=8, width=8)
    ds.prepare()
    assert ds.num_classes == 2 and ds.class_names == ["BG", "Lung Opacity"]
    assert ds.image_ids.tolist() == [0, 1]
    assert ds.map_source_class_id("rsna.1") == 1
    assert ds.source_image_link(1) == "/x/p2.png"
    assert ds.image_info[0]["id"] == "p1"
    masks, class_ids = ds.load_mask(0)
    assert masks.shape == (8, 8, 0) and class_ids.dtype == np.int32
