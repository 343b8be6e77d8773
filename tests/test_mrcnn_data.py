"""Mask R-CNN training data: RPN targets, detection targets, load_image_gt, augmentation, batches."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")

from kit.mrcnn import data as D  # noqa: E402
from kit.mrcnn import utils  # noqa: E402
from kit.mrcnn.augment import albumentations_augmentation  # noqa: E402
from kit.mrcnn.config import Config  # noqa: E402


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 24, 32, 48)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    TRAIN_ROIS_PER_IMAGE = 30
    POST_NMS_ROIS_TRAINING = 50
    MAX_GT_INSTANCES = 3
    MINI_MASK_SHAPE = (14, 14)
    MASK_SHAPE = [14, 14]


class BoxDataset(utils.Dataset):
    """64x64 grey images with bright filled rectangles; ``boxes[i]`` is a list of y1x1y2x2."""

    def __init__(self, boxes: list[list[tuple[int, int, int, int]]], size: int = 64):
        super().__init__()
        self.add_class("box", 1, "opacity")
        for i, bs in enumerate(boxes):
            self.add_image("box", i, None, boxes=bs, height=size, width=size)
        self.prepare()

    def load_image(self, image_id):
        info = self.image_info[image_id]
        image = np.full((info["height"], info["width"], 3), 40, np.uint8)
        for y1, x1, y2, x2 in info["boxes"]:
            image[y1:y2, x1:x2] = 200
        return image

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        mask = np.zeros((info["height"], info["width"], len(info["boxes"])), bool)
        for i, (y1, x1, y2, x2) in enumerate(info["boxes"]):
            mask[y1:y2, x1:x2, i] = True
        return mask, np.ones(len(info["boxes"]), np.int32)


def _anchors(config):
    return utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                                          config.BACKBONE_SHAPES, config.BACKBONE_STRIDES,
                                          config.RPN_ANCHOR_STRIDE)


def _check_rpn(anchors, gt_boxes, match, bbox, config):
    total = config.RPN_TRAIN_ANCHORS_PER_IMAGE
    pos, neg = np.flatnonzero(match == 1), np.flatnonzero(match == -1)
    assert match.shape == (len(anchors),) and match.dtype == np.int32
    assert bbox.shape == (total, 4)
    assert len(pos) <= total // 2 and len(pos) + len(neg) == total
    iou = utils.compute_overlaps(anchors, gt_boxes).max(axis=1) if len(gt_boxes) else \
        np.zeros(len(anchors))
    assert np.all(iou[neg] < 0.3)
    decoded = utils.apply_box_deltas(anchors[pos], bbox[:len(pos)] * config.RPN_BBOX_STD_DEV)
    best = utils.compute_overlaps(anchors[pos], gt_boxes).argmax(axis=1) if len(pos) else []
    np.testing.assert_allclose(decoded, np.asarray(gt_boxes, float)[best].reshape(-1, 4),
                               atol=1e-4)
    assert np.all(bbox[len(pos):] == 0)
    return pos, iou


def test_rpn_targets_zero_gt_boxes_all_negative():
    config = TinyConfig()
    anchors = _anchors(config)
    match, bbox = D.build_rpn_targets(anchors, np.zeros(0, np.int32), np.zeros((0, 4)), config,
                                      np.random.default_rng(0))
    assert len(anchors) == 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    assert (match == -1).sum() == 64 and (match == 1).sum() == 0
    assert np.all(bbox == 0) and np.all(np.isfinite(bbox))


def test_rpn_targets_one_gt_box():
    config = TinyConfig()
    anchors = _anchors(config)
    gt = np.array([[20, 20, 36, 36]])
    match, bbox = D.build_rpn_targets(anchors, [1], gt, config, np.random.default_rng(0))
    pos, iou = _check_rpn(anchors, gt, match, bbox, config)
    assert iou.argmax() in pos                      # the best anchor is always positive
    assert np.all((iou[pos] >= 0.7) | (iou[pos] == iou.max()))


def test_rpn_targets_four_gt_boxes_each_gets_an_anchor_and_cap_holds():
    config = TinyConfig()
    anchors = _anchors(config)
    gt = np.array([[2, 2, 14, 14], [40, 4, 60, 20], [6, 30, 30, 62], [44, 44, 52, 60]])
    match, bbox = D.build_rpn_targets(anchors, [1, 1, 1, 1], gt, config, np.random.default_rng(1))
    pos, _ = _check_rpn(anchors, gt, match, bbox, config)
    owners = set(utils.compute_overlaps(anchors[pos], gt).argmax(axis=1))
    assert owners == {0, 1, 2, 3}
    config.RPN_TRAIN_ANCHORS_PER_IMAGE = 6           # forces positive subsampling to 3
    match, bbox = D.build_rpn_targets(anchors, [1, 1, 1, 1], gt, config, np.random.default_rng(1))
    pos, _ = _check_rpn(anchors, gt, match, bbox, config)
    assert len(pos) == 3


def test_rpn_targets_reject_background_class():
    config = TinyConfig()
    with pytest.raises(ValueError, match="gt_class_ids"):
        D.build_rpn_targets(_anchors(config), [0], np.array([[0, 0, 8, 8]]), config)


def test_detection_targets_sampling_padding_and_deltas():
    config = TinyConfig()
    config.USE_MINI_MASK = False
    gt = np.array([[10, 10, 30, 40], [40, 8, 60, 24]])
    ids = np.array([1, 1], np.int32)
    masks = np.zeros((64, 64, 2), bool)
    masks[10:30, 10:40, 0] = masks[40:60, 8:24, 1] = True
    rng = np.random.default_rng(3)
    rois = D.generate_random_rois((64, 64, 3), 200, gt, rng)
    assert rois.shape == (200, 4) and np.all(rois[:, 2] > rois[:, 0])
    assert np.all(rois[:, 3] > rois[:, 1]) and rois.min() >= 0 and rois.max() <= 64
    rois = np.concatenate([gt, rois])                 # two certain positives
    out_rois, cls, deltas, tmasks = D.build_detection_targets(rois, ids, gt, masks, config, rng)
    t = config.TRAIN_ROIS_PER_IMAGE
    assert out_rois.shape == (t, 4) and cls.shape == (t,) and deltas.shape == (t, 4)
    assert tmasks.shape == (t, 14, 14)
    n_pos = int((cls > 0).sum())
    assert 2 <= n_pos <= int(t * config.ROI_POSITIVE_RATIO)
    assert np.all(cls[:n_pos] == 1) and np.all(cls[n_pos:] == 0)
    iou = utils.compute_overlaps(out_rois, gt).max(axis=1)
    assert np.all(iou[:n_pos] >= 0.5)
    n_kept = int((out_rois.sum(axis=1) > 0).sum())
    assert n_kept - n_pos == int(n_pos / config.ROI_POSITIVE_RATIO) - n_pos   # 1:2 ratio
    assert np.all(iou[n_pos:n_kept] < 0.5)
    assert np.all(out_rois[n_kept:] == 0) and np.all(deltas[n_pos:] == 0)  # padding
    best = utils.compute_overlaps(out_rois[:n_pos], gt).argmax(axis=1)
    decoded = utils.apply_box_deltas(out_rois[:n_pos], deltas[:n_pos] * config.BBOX_STD_DEV)
    np.testing.assert_allclose(decoded, gt[best], atol=1e-3)
    exact = np.flatnonzero((out_rois[:n_pos] == gt[0]).all(axis=1))[0]
    assert tmasks[exact].all()                        # ROI == GT box -> a full mask
    assert tmasks[:n_pos].max() == 1 and tmasks[n_pos:].max() == 0


def test_detection_targets_without_gt_are_all_negative():
    config = TinyConfig()
    rois = D.generate_random_rois((64, 64, 3), 40, np.zeros((0, 4)), np.random.default_rng(0))
    out_rois, cls, deltas, masks = D.build_detection_targets(
        rois, np.zeros(0, np.int32), np.zeros((0, 4)), np.zeros((14, 14, 0), bool), config)
    assert np.all(cls == 0) and np.all(deltas == 0) and np.all(masks == 0)
    assert (out_rois.sum(axis=1) > 0).sum() == config.TRAIN_ROIS_PER_IMAGE


def test_load_image_gt_empty_image_and_mini_masks():
    config = TinyConfig()
    ds = BoxDataset([[], [(8, 10, 24, 50)]])
    image, meta, ids, bbox, mask = D.load_image_gt(ds, config, 0)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert ids.shape == (0,) and bbox.shape == (0, 4) and mask.shape == (14, 14, 0)
    assert meta.shape == (config.IMAGE_META_SIZE,)
    image, meta, ids, bbox, mask = D.load_image_gt(ds, config, 1)
    assert bbox.tolist() == [[8, 10, 24, 50]] and ids.tolist() == [1]
    assert mask.shape == (14, 14, 1) and mask.all()


def test_augmentation_hook_drops_instances_that_leave_the_image():
    config = TinyConfig()
    config.USE_MINI_MASK = False
    ds = BoxDataset([[(4, 4, 12, 12), (30, 30, 50, 40)]])

    def shift_down(image, masks):                    # moves everything 20 px down
        return np.roll(image, 20, axis=0), np.concatenate(
            [np.zeros((20, 64, masks.shape[2]), bool), masks[:-20]], axis=0)

    _, _, ids, bbox, mask = D.load_image_gt(ds, config, 0, shift_down)
    assert bbox.tolist() == [[24, 4, 32, 12], [50, 30, 64, 40]]   # second one clipped
    _, _, ids, bbox, mask = D.load_image_gt(
        ds, config, 0, lambda im, m: (im, np.zeros_like(m)))
    assert ids.shape == (0,) and bbox.shape == (0, 4) and mask.shape == (64, 64, 0)
    with pytest.raises(ValueError, match="augmentation changed shapes"):
        D.load_image_gt(ds, config, 0, lambda im, m: (im[:32], m[:32]))


def test_albumentations_adapter_keeps_boxes_and_masks_consistent():
    pytest.importorskip("albumentations")
    config = TinyConfig()
    config.USE_MINI_MASK = False
    ds = BoxDataset([[(10, 6, 30, 20)]])
    flip = albumentations_augmentation(flip=1.0, affine=0.0, brightness_contrast=0.0, blur=0.0)
    image, _, _, bbox, mask = D.load_image_gt(ds, config, 0, flip)
    assert bbox.tolist() == [[10, 44, 30, 58]]
    assert np.array_equal(image[..., 0] == 200, mask[..., 0])
    moved = albumentations_augmentation(flip=0.5, affine=1.0, brightness_contrast=0.0,
                                          blur=0.0, rotate=0.0)
    for _ in range(3):
        image, _, _, bbox, mask = D.load_image_gt(ds, config, 0, moved)
        bright = image[..., 0] > 120
        assert np.mean(bright == mask[..., 0]) > 0.99   # pixels and mask moved together
        y1, x1, y2, x2 = bbox[0]
        assert mask[y1:y2, x1:x2, 0].mean() > 0.9
    full = albumentations_augmentation(flip=1.0, affine=1.0, brightness_contrast=1.0, blur=1.0)
    empty = np.zeros((64, 64, 0), bool)
    out_image, out_masks = full(ds.load_image(0), empty)
    assert out_image.shape == (64, 64, 3) and out_masks.shape == (64, 64, 0)


def test_generator_batches_have_the_contract_shapes_and_include_empty_images():
    config = TinyConfig()
    ds = BoxDataset([[], [(8, 8, 40, 30)], [], [(2, 2, 20, 20), (30, 30, 60, 60)]])
    gen = D.DataGenerator(ds, config, shuffle=True, seed=5)
    assert len(gen) == 2
    (x,) = gen[0]
    a = len(gen.anchors)
    expected = {
        "input_image": ((2, 64, 64, 3), np.float32),
        "input_image_meta": ((2, config.IMAGE_META_SIZE), np.float32),
        "input_rpn_match": ((2, a, 1), np.int32),
        "input_rpn_bbox": ((2, 64, 4), np.float32),
        "input_gt_class_ids": ((2, 3), np.int32),
        "input_gt_boxes": ((2, 3, 4), np.float32),
        "input_gt_masks": ((2, 14, 14, 3), np.uint8),
    }
    assert set(x) == set(D.INPUT_NAMES) == set(expected)
    for name, (shape, dtype) in expected.items():
        assert x[name].shape == shape and x[name].dtype == dtype, name
    seen = np.concatenate([gen[i][0]["input_image_meta"][:, 0] for i in range(len(gen))])
    assert sorted(seen.astype(int).tolist()) == [0, 1, 2, 3]   # empty images included, once
    assert np.array_equal(gen[1][0]["input_rpn_match"], gen[1][0]["input_rpn_match"])
    gen.on_epoch_end()
    again = np.concatenate([gen[i][0]["input_image_meta"][:, 0] for i in range(len(gen))])
    assert sorted(again.astype(int).tolist()) == [0, 1, 2, 3]
    config.TRAIN_ON_EMPTY_IMAGES = False
    only = D.DataGenerator(ds, config, shuffle=False, steps=3)
    ids = np.concatenate([only[i][0]["input_image_meta"][:, 0] for i in range(3)])
    assert set(ids.astype(int).tolist()) == {1, 3} and len(ids) == 6


def test_generator_random_rois_when_rpn_rois_are_off():
    config = TinyConfig()
    config.USE_RPN_ROIS = False
    (x,) = D.DataGenerator(BoxDataset([[(8, 8, 40, 30)], []]), config)[0]
    assert x[D.RANDOM_ROIS_NAME].shape == (2, 50, 4)


def _batches(gen) -> list[dict[str, np.ndarray]]:
    return [gen[i][0] for i in range(len(gen))]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
               for x, y in zip(a, b))


def test_generator_batches_depend_on_seed_epoch_and_index_only_even_with_threads():
    pytest.importorskip("albumentations")
    from concurrent.futures import ThreadPoolExecutor

    config = TinyConfig()
    ds = BoxDataset([[(8, 8, 30, 40)], [], [(20, 4, 50, 30)], [(2, 2, 20, 20), (30, 30, 60, 60)],
                     [], [(10, 30, 40, 60)]])

    def gen(seed, epoch=0, augmentation=albumentations_augmentation()):
        return D.DataGenerator(ds, config, augmentation=augmentation, seed=seed, epoch=epoch,
                               workers=2)

    reference = gen(11)
    epoch0 = _batches(reference)
    reference.on_epoch_end()
    epoch1 = _batches(reference)
    threaded = gen(11)                                    # fetched out of order, 4 threads at once
    with ThreadPoolExecutor(4) as pool:
        items = list(pool.map(lambda i: threaded[i][0], reversed(range(len(threaded)))))[::-1]
    assert _same(items, epoch0)
    assert _same(_batches(gen(11, epoch=1)), epoch1)     # a resumed epoch 1 sees epoch 1's data
    assert not _same(epoch0, epoch1)
    assert not _same(_batches(gen(12)), epoch0)
    plain = _batches(gen(11, augmentation=None))
    assert not all(np.array_equal(a["input_image"], b["input_image"])
                   for a, b in zip(plain, epoch0))      # the augmentation did something


def test_albumentations_output_is_a_function_of_the_seed_across_threads():
    pytest.importorskip("albumentations")
    from concurrent.futures import ThreadPoolExecutor

    ds = BoxDataset([[(10, 6, 30, 20)]])
    image, (masks, _) = ds.load_image(0), ds.load_mask(0)
    aug = albumentations_augmentation(flip=0.5, affine=1.0, brightness_contrast=1.0, blur=0.5)
    want = [aug(image, masks, seed=s) for s in range(8)]
    assert not all(np.array_equal(want[0][0], w[0]) for w in want[1:])
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: aug(image, masks, seed=s), list(range(8)) * 3))
    for s, (im, m) in enumerate(got):
        assert np.array_equal(im, want[s % 8][0]) and np.array_equal(m, want[s % 8][1])
    # one generator shared by the transforms: flip and brightness fire independently
    # (Compose.set_random_seed would give both the same stream: always together)
    two = albumentations_augmentation(flip=0.5, affine=0.0, brightness_contrast=0.5, blur=0.0)
    flipped, changed = [], []
    for s in range(40):
        im, m = two(image, masks, seed=s)
        flipped.append(np.array_equal(m, masks[:, ::-1]))
        changed.append(not np.array_equal(im, image[:, ::-1] if flipped[-1] else image))
    assert 0 < sum(flipped) < 40 and 0 < sum(changed) < 40 and flipped != changed
    import pickle
    clone = pickle.loads(pickle.dumps(aug))              # process workers get a copy
    assert np.array_equal(clone(image, masks, seed=3)[0], want[3][0])


def test_custom_augmentation_gets_a_seed_only_when_it_takes_one():
    config = TinyConfig()
    ds = BoxDataset([[(8, 8, 30, 40)], []])
    seen = []

    def seeded(image, masks, seed):
        seen.append(seed)
        return image, masks

    def unseeded(image, masks):
        seen.append("none")
        return image, masks

    for aug in (seeded, unseeded, lambda im, m, **kw: (seen.append(kw["seed"]) or (im, m))):
        D.DataGenerator(ds, config, augmentation=aug, seed=1)[0]
    assert seen[2:4] == ["none", "none"]
    assert all(isinstance(s, int) for s in seen[:2] + seen[4:])
    assert seen[:2] == seen[4:] and seen[0] != seen[1]   # per image, same seeds each time
    assert not D.takes_seed(unseeded) and D.takes_seed(albumentations_augmentation())


def test_generator_image_class_input():
    config = TinyConfig()
    config.IMAGE_CLASSES = 3
    ds = BoxDataset([[(8, 8, 30, 40)], [], [], []])
    for i, cls in enumerate([0, 2, None, 1]):
        if cls is not None:
            ds.image_info[i]["image_class"] = cls
    gen = D.DataGenerator(ds, config, shuffle=False)
    values = np.concatenate([b[D.IMAGE_CLASS_INPUT] for b in _batches(gen)])
    assert values.dtype == np.int32 and values.tolist() == [0, 2, -1, 1]    # missing: -1
    assert gen[0][0][D.IMAGE_CLASS_INPUT].shape == (2,)
    ds.image_info[3]["image_class"] = 3
    with pytest.raises(ValueError, match=r"image 3 \(id 3\): image_class=3, expected an int "
                                         r"in -1\.\.2"):
        gen[1]
    config.IMAGE_CLASSES = 0
    assert D.IMAGE_CLASS_INPUT not in D.DataGenerator(ds, config)[0][0]
