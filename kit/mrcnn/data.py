"""Training data for Mask R-CNN: ground truth per image, RPN and detection targets, batches.

Boxes are [y1, x1, y2, x2] in pixels of the molded (resized + padded) image, y2/x2 exclusive
(as ``utils.extract_bboxes`` gives them). Images without boxes are first-class citizens (about
77% of RSNA): they get all-negative RPN targets and zero-padded head inputs.

Augmentation: see kit.mrcnn.augment (any ``aug(image, masks) -> (image, masks)``; seeded when
it accepts ``seed=``). Boxes are recomputed from the returned masks and instances whose mask
vanished (moved out of the image) are dropped.

Randomness (vs. Matterport's global np.random): every random draw of a batch comes from
``np.random.SeedSequence([seed, epoch, batch index, slot])``, so any number of thread workers,
in any timing, give the same batches, and a resumed run the same epoch it would have had.
"""
from __future__ import annotations

import math

import keras
import numpy as np

from kit.mrcnn import molding, utils
from kit.mrcnn.augment import Augmentation, takes_seed

INPUT_NAMES = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
               "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")
RANDOM_ROIS_NAME = "input_roi"   # extra input when config.USE_RPN_ROIS is False
IMAGE_CLASS_INPUT = "input_image_class"   # extra input when config.IMAGE_CLASSES > 0


def load_image_gt(dataset: utils.Dataset, config, image_id: int,
                  augmentation: Augmentation | None = None, seed: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load, resize and augment one image with its ground truth.

    ``seed`` goes to the augmentation as ``seed=`` when it accepts one (see module docstring).

    Returns ``(image, image_meta, class_ids, bbox, mask)``: image HxWx3 uint8 of the molded size,
    image_meta (IMAGE_META_SIZE,) float, class_ids (N,) int32, bbox (N, 4) int32 [y1, x1, y2, x2]
    pixels, mask bool (MINI_MASK_SHAPE + (N,)) if USE_MINI_MASK else (H, W, N). N may be 0.
    """
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    original_shape = image.shape
    if mask.shape[-1] == 0:          # no instances: any (even 0x0) mask means "none here"
        mask = np.zeros((*image.shape[:2], 0), bool)
    image, window, scale, padding, crop = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
    mask = utils.resize_mask(mask, scale, padding, crop).astype(bool)
    if augmentation is not None:
        shapes = (image.shape, mask.shape)
        if seed is not None and takes_seed(augmentation):
            image, mask = augmentation(image, mask, seed=seed)
        else:
            image, mask = augmentation(image, mask)
        if (image.shape, mask.shape) != shapes:
            raise ValueError(f"augmentation changed shapes {shapes} -> {(image.shape, mask.shape)}; "
                             "it must keep the image and mask sizes")
        image, mask = np.asarray(image, np.uint8), np.asarray(mask, bool)
    keep = mask.any(axis=(0, 1))
    mask, class_ids = mask[:, :, keep], np.asarray(class_ids, np.int32)[keep]
    bbox = utils.extract_bboxes(mask).astype(np.int32).reshape(-1, 4)
    active_class_ids = np.zeros(dataset.num_classes, np.int32)
    source = dataset.image_info[image_id]["source"]
    active_class_ids[dataset.source_class_ids[source]] = 1
    if config.USE_MINI_MASK:
        mask = utils.minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)
    image_meta = molding.compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                          active_class_ids)
    return image, image_meta, class_ids, bbox, mask


def build_rpn_targets(anchors: np.ndarray, gt_class_ids: np.ndarray, gt_boxes: np.ndarray,
                      config, rng: np.random.Generator | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Match anchors to GT boxes and sample RPN_TRAIN_ANCHORS_PER_IMAGE of them.

    anchors (A, 4) and gt_boxes (G, 4) are [y1, x1, y2, x2] pixels; G may be 0. An anchor is
    positive if its IoU with some GT is >= 0.7 or it is (one of) the best anchor(s) of a GT,
    negative if its best IoU is < 0.3, otherwise neutral. At most half the sample is positive,
    negatives fill the rest. Returns ``rpn_match`` (A,) int32 in {1, -1, 0} and ``rpn_bbox``
    (RPN_TRAIN_ANCHORS_PER_IMAGE, 4) float32: the deltas (dy, dx, log dh, log dw) / RPN_BBOX_STD_DEV
    of the positives in anchor order, zero padded.
    """
    rng = rng or np.random.default_rng()
    total = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    rpn_match = np.zeros(len(anchors), np.int32)
    rpn_bbox = np.zeros((total, 4), np.float32)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if np.any(np.asarray(gt_class_ids) <= 0):
        raise ValueError("gt_class_ids must be > 0 (0 is background; crowd boxes are unsupported)")
    if len(gt_boxes):
        overlaps = utils.compute_overlaps(anchors, gt_boxes)          # (A, G)
        best_gt = overlaps.argmax(axis=1)
        best_iou = overlaps[np.arange(len(anchors)), best_gt]
        rpn_match[best_iou < 0.3] = -1
        gt_best = overlaps.max(axis=0)
        ties = (overlaps == gt_best) & (gt_best > 0)                  # best anchors of each GT
        rpn_match[ties.any(axis=1)] = 1
        rpn_match[best_iou >= 0.7] = 1
    else:
        best_gt = np.zeros(len(anchors), np.int64)
        rpn_match[:] = -1
    positive = np.flatnonzero(rpn_match == 1)
    if len(positive) > total // 2:
        rpn_match[rng.choice(positive, len(positive) - total // 2, replace=False)] = 0
        positive = np.flatnonzero(rpn_match == 1)
    negative = np.flatnonzero(rpn_match == -1)
    if len(negative) > total - len(positive):
        rpn_match[rng.choice(negative, len(negative) - (total - len(positive)), replace=False)] = 0
    if len(positive):
        deltas = utils.box_refinement(anchors[positive].astype(np.float64),
                                      gt_boxes[best_gt[positive]])
        rpn_bbox[:len(positive)] = deltas / np.asarray(config.RPN_BBOX_STD_DEV)
    return rpn_match, rpn_bbox


def generate_random_rois(image_shape: tuple[int, ...], count: int, gt_boxes: np.ndarray,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """``count`` random ROIs (int32 [y1, x1, y2, x2] pixels, non-empty, inside the image).

    With GT boxes, 90% are drawn around them (each coordinate within the box size) and the rest
    anywhere; without GT all are drawn anywhere. Used instead of RPN ROIs (USE_RPN_ROIS=False).
    """
    rng = rng or np.random.default_rng()
    height, width = int(image_shape[0]), int(image_shape[1])
    gt_boxes = np.asarray(gt_boxes, np.int64).reshape(-1, 4)

    def draw(n: int, y_lo: int, y_hi: int, x_lo: int, x_hi: int) -> np.ndarray:
        """n boxes whose corners are pixel indices in [lo, hi] (hi inclusive), y2/x2 exclusive."""
        ys = np.sort(rng.integers(y_lo, y_hi, size=(n, 2), endpoint=True), axis=1)
        xs = np.sort(rng.integers(x_lo, x_hi, size=(n, 2), endpoint=True), axis=1)
        return np.stack([ys[:, 0], xs[:, 0], ys[:, 1] + 1, xs[:, 1] + 1], axis=1)

    parts = []
    per_box = int(0.9 * count / len(gt_boxes)) if len(gt_boxes) else 0
    for y1, x1, y2, x2 in gt_boxes:
        h, w = y2 - y1, x2 - x1
        parts.append(draw(per_box, max(y1 - h, 0), min(y2 + h, height - 1),
                          max(x1 - w, 0), min(x2 + w, width - 1)))
    parts.append(draw(count - per_box * len(gt_boxes), 0, height - 1, 0, width - 1))
    return np.concatenate(parts).astype(np.int32)


def _sample_mask(mask: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour crop of a full HxW mask to ``box`` (pixels) resized to ``shape``."""
    y1, x1, y2, x2 = box
    ys = np.floor(y1 + (np.arange(shape[0]) + 0.5) * (y2 - y1) / shape[0]).astype(int)
    xs = np.floor(x1 + (np.arange(shape[1]) + 0.5) * (x2 - x1) / shape[1]).astype(int)
    inside = ((ys >= 0) & (ys < mask.shape[0]))[:, None] & ((xs >= 0) & (xs < mask.shape[1]))
    values = mask[np.clip(ys, 0, mask.shape[0] - 1)][:, np.clip(xs, 0, mask.shape[1] - 1)]
    return np.where(inside, values, False)


def build_detection_targets(rois: np.ndarray, gt_class_ids: np.ndarray, gt_boxes: np.ndarray,
                            gt_masks: np.ndarray, config, rng: np.random.Generator | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of the head targets (what the graph's DetectionTargetLayer computes).

    rois (R, 4) and gt_boxes (G, 4) are pixels [y1, x1, y2, x2]; gt_masks as load_image_gt
    returns them (mini or full). ROIs with IoU >= 0.5 to some GT are positive, < 0.5 negative. At
    most TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO positives are sampled, then negatives so that
    positives are ROI_POSITIVE_RATIO of the sample; the rest is zero padding.
    Returns rois (T, 4) float32, class_ids (T,) int32 (0 = negative/padding), deltas (T, 4)
    float32 (/ BBOX_STD_DEV, zero except positives) and masks (T, *MASK_SHAPE) float32 in {0, 1}.
    T = TRAIN_ROIS_PER_IMAGE, positives first.
    """
    rng = rng or np.random.default_rng()
    total = int(config.TRAIN_ROIS_PER_IMAGE)
    rois = np.asarray(rois, np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(gt_boxes):
        overlaps = utils.compute_overlaps(rois, gt_boxes)
        best_gt, best_iou = overlaps.argmax(axis=1), overlaps.max(axis=1)
    else:
        best_gt, best_iou = np.zeros(len(rois), int), np.zeros(len(rois))
    positive = np.flatnonzero(best_iou >= 0.5)
    negative = np.flatnonzero(best_iou < 0.5)
    positive = rng.permutation(positive)[:int(total * config.ROI_POSITIVE_RATIO)]
    n_negative = int(len(positive) / config.ROI_POSITIVE_RATIO) - len(positive) if len(positive) \
        else total
    negative = rng.permutation(negative)[:min(n_negative, total - len(positive))]
    keep = np.concatenate([positive, negative]).astype(int)
    out_rois = np.zeros((total, 4), np.float32)
    out_rois[:len(keep)] = rois[keep]
    class_ids = np.zeros(total, np.int32)
    deltas = np.zeros((total, 4), np.float32)
    masks = np.zeros((total, *config.MASK_SHAPE), np.float32)
    if len(positive):
        matched = best_gt[positive]
        class_ids[:len(positive)] = np.asarray(gt_class_ids)[matched]
        deltas[:len(positive)] = (utils.box_refinement(rois[positive], gt_boxes[matched])
                                  / np.asarray(config.BBOX_STD_DEV))
        full = (utils.expand_mask(gt_boxes.astype(np.int32), gt_masks, config.IMAGE_SHAPE)
                if config.USE_MINI_MASK else gt_masks)
        for i, (roi, g) in enumerate(zip(rois[positive], matched)):
            masks[i] = _sample_mask(full[:, :, g], roi, tuple(config.MASK_SHAPE))
    return out_rois, class_ids, deltas, masks


class DataGenerator(keras.utils.PyDataset):
    """Batches of training inputs: item i is ``(x_dict,)`` with the 7 INPUT_NAMES as numpy arrays.

    Shapes (B = config.BATCH_SIZE): input_image [B,H,W,3] float32 (mean-subtracted),
    input_image_meta [B,IMAGE_META_SIZE] float32, input_rpn_match [B,A,1] int32,
    input_rpn_bbox [B,RPN_TRAIN_ANCHORS_PER_IMAGE,4] float32, input_gt_class_ids
    [B,MAX_GT_INSTANCES] int32, input_gt_boxes [B,MAX_GT_INSTANCES,4] float32 pixels,
    input_gt_masks [B,*MINI_MASK_SHAPE (or H,W),MAX_GT_INSTANCES] uint8 in {0, 1} (Keras casts it
    to the graph's bool input; a bool array would break fit's first-batch MEAN reduction under
    MirroredStrategy); plus input_roi [B,POST_NMS_ROIS_TRAINING,4] int32 when USE_RPN_ROIS is
    False, and input_image_class [B] int32 when IMAGE_CLASSES > 0: each image's
    ``image_info[i].get("image_class", -1)`` (0..IMAGE_CLASSES-1; -1 = unknown, not scored).

    One epoch is ``steps`` batches (default: one pass over the images); the image order is a
    fresh permutation per epoch when ``shuffle``. ``epoch`` is the number of the first epoch
    (0-based, as fit's initial_epoch); on_epoch_end advances it. Every random draw (order, RPN
    anchor sampling, augmentation seed, GT subsampling) is a pure function of (seed, epoch,
    batch index, slot), so thread workers give the same batches as one worker. Images without
    boxes are kept unless config.TRAIN_ON_EMPTY_IMAGES is False.
    """

    def __init__(self, dataset: utils.Dataset, config, shuffle: bool = True,
                 augmentation: Augmentation | None = None, workers: int = 1,
                 use_multiprocessing: bool = False, max_queue_size: int = 10, *,
                 steps: int | None = None, seed: int = 0, epoch: int = 0):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.dataset, self.config = dataset, config
        self.shuffle, self.augmentation, self.seed = shuffle, augmentation, seed
        ids = np.asarray(dataset.image_ids)
        if not config.TRAIN_ON_EMPTY_IMAGES:
            ids = np.array([i for i in ids if len(dataset.load_mask(i)[1])], dtype=ids.dtype)
        if len(ids) == 0:
            raise ValueError("DataGenerator: the data set has no usable images")
        self.image_ids = ids
        self.batch_size = int(config.BATCH_SIZE)
        self.steps = int(steps) if steps else math.ceil(len(ids) / self.batch_size)
        self.anchors = utils.generate_pyramid_anchors(
            config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, config.BACKBONE_SHAPES,
            config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)
        self.epoch = int(epoch)
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        """Image ids for one epoch: enough passes (each a permutation if shuffled) for all steps."""
        passes = math.ceil(self.steps * self.batch_size / len(self.image_ids))
        rng = np.random.default_rng([self.seed, self.epoch])
        return np.concatenate([rng.permutation(self.image_ids) if self.shuffle else self.image_ids
                               for _ in range(passes)])

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._make_order()

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray]]:
        if not 0 <= index < self.steps:
            raise IndexError(f"batch {index} out of range [0, {self.steps})")
        order = self._order
        batch = [self._example(int(order[index * self.batch_size + k]),
                               np.random.SeedSequence([self.seed, self.epoch, index, k]))
                 for k in range(self.batch_size)]
        return ({name: np.stack([b[name] for b in batch]) for name in batch[0]},)

    def _example(self, image_id: int, seeds: np.random.SeedSequence) -> dict[str, np.ndarray]:
        """Inputs of one image (no batch axis); all its randomness comes from ``seeds``."""
        config = self.config
        sampling, augmenting = seeds.spawn(2)
        rng = np.random.default_rng(sampling)
        image, meta, class_ids, boxes, masks = load_image_gt(
            self.dataset, config, image_id, self.augmentation,
            seed=int(augmenting.generate_state(1)[0]))
        rpn_match, rpn_bbox = build_rpn_targets(self.anchors, class_ids, boxes, config, rng)
        limit = int(config.MAX_GT_INSTANCES)
        if len(class_ids) > limit:
            pick = rng.choice(len(class_ids), limit, replace=False)
            class_ids, boxes, masks = class_ids[pick], boxes[pick], masks[:, :, pick]
        n = len(class_ids)
        gt_ids = np.zeros(limit, np.int32)
        gt_ids[:n] = class_ids
        gt_boxes = np.zeros((limit, 4), np.float32)
        gt_boxes[:n] = boxes
        gt_masks = np.zeros((*masks.shape[:2], limit), np.uint8)
        gt_masks[:, :, :n] = masks
        out = {
            "input_image": molding.mold_image(image.astype(np.float32), config).astype(np.float32),
            "input_image_meta": np.asarray(meta, np.float32),
            "input_rpn_match": rpn_match[:, None],
            "input_rpn_bbox": rpn_bbox,
            "input_gt_class_ids": gt_ids,
            "input_gt_boxes": gt_boxes,
            "input_gt_masks": gt_masks,
        }
        if not config.USE_RPN_ROIS:
            out[RANDOM_ROIS_NAME] = generate_random_rois(
                image.shape, int(config.POST_NMS_ROIS_TRAINING), boxes, rng)
        if config.IMAGE_CLASSES:
            out[IMAGE_CLASS_INPUT] = np.int32(self._image_class(image_id))
        return out

    def _image_class(self, image_id: int) -> int:
        """The image's class for the image head, -1 when unknown; ValueError if out of range."""
        info = self.dataset.image_info[image_id]
        value = info.get("image_class", -1)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not -1 <= value < self.config.IMAGE_CLASSES:
            raise ValueError(f"image {image_id} (id {info.get('id')!r}): image_class={value!r}, "
                             f"expected an int in -1..{self.config.IMAGE_CLASSES - 1} "
                             "(-1 = unknown)")
        return int(value)
