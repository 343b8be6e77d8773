"""DetectionTargetLayer: sample training ROIs and build their class, box and mask targets.

Training-only (the inference graph never uses it). Boxes are normalised y1x1y2x2 as in
kit.mrcnn.layers.

Differences from Matterport: ``proposals_with_gt`` appends the ground-truth boxes to the
proposals before sampling (torchvision/detectron2 do; Matterport does not), so the box and mask
heads get positives even when no proposal overlaps a box yet (early training from random
init); the ROI sampling uses stateless random ops seeded from a ``keras.random.SeedGenerator``
(``seed``), so a seeded run samples the same ROIs again whatever the thread timing.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from kit.mrcnn.layers import GraphLayer, box_refinement_graph, overlaps_graph, pad_rows


class DetectionTargetLayer(GraphLayer):
    """Sample training ROIs from proposals and give each its class, box and mask targets.

    Inputs: proposals [B, N, 4] normalised (zero rows = padding), gt_class_ids [B, G] int
    (0 = padding, < 0 = crowd), gt_boxes [B, G, 4] normalised, gt_masks [B, h, w, G] (mini
    masks inside their gt box when ``use_mini_mask``, else full image masks).
    Positives: IoU >= 0.5 with a gt box (at most roi_positive_ratio * rois_per_image);
    negatives: IoU < 0.5 and not touching a crowd box, ``1/ratio - 1`` per positive, or
    ``negatives_without_positives`` when an image has no positive ROI (RSNA's empty images).
    ``proposals_with_gt``: the image's (non-crowd) gt boxes join the proposals first, so every
    gt box is a positive candidate (IoU 1, zero deltas, its whole mask). ``seed``: int seed of
    the sampling (None: drawn from Python's ``random``, which keras.utils.set_random_seed
    seeds); each call draws fresh stateless seeds, image b of the batch its own.
    Outputs (zero padded to rois_per_image): rois [B, T, 4], target_class_ids [B, T] int32,
    target_deltas [B, T, 4] (/ bbox_std_dev), target_mask [B, T, mask_h, mask_w] in {0, 1}.
    """

    output_dtypes = ("float32", "int32", "float32", "float32")

    def __init__(self, rois_per_image: int, roi_positive_ratio: float, bbox_std_dev,
                 mask_shape, use_mini_mask: bool, negatives_without_positives: int = 0,
                 proposals_with_gt: bool = False, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rois_per_image, self.roi_positive_ratio = int(rois_per_image), roi_positive_ratio
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]
        self.mask_shape = [int(v) for v in mask_shape]
        self.use_mini_mask = bool(use_mini_mask)
        self.negatives_without_positives = int(negatives_without_positives)
        self.proposals_with_gt = bool(proposals_with_gt)
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="roi_sampling_seed")

    def _one_image(self, args):
        proposals, gt_class_ids, gt_boxes, gt_masks, seed = args
        proposals, gt_boxes = tf.reshape(proposals, [-1, 4]), tf.reshape(gt_boxes, [-1, 4])
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
        if self.proposals_with_gt:
            proposals = tf.concat([proposals, gt_boxes], axis=0)

        overlaps = overlaps_graph(proposals, gt_boxes)                      # [N, G]
        # an extra zero column keeps max/argmax defined when the image has no gt box
        overlaps = tf.concat([overlaps, tf.zeros_like(proposals[:, :1])], axis=1)
        best_iou = tf.reduce_max(overlaps, axis=1)
        crowd_iou = tf.reduce_max(tf.concat(
            [overlaps_graph(proposals, crowd_boxes), tf.zeros_like(proposals[:, :1])], 1), 1)
        positive = tf.where(best_iou >= 0.5)[:, 0]
        negative = tf.where((best_iou < 0.5) & (crowd_iou < 0.001))[:, 0]
        max_pos = int(self.rois_per_image * self.roi_positive_ratio)
        pos_seed, neg_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        positive = tf.random.experimental.stateless_shuffle(positive, pos_seed)[:max_pos]
        n_pos = tf.shape(positive)[0]
        n_neg = tf.where(
            n_pos > 0,
            tf.cast(tf.cast(n_pos, tf.float32) / self.roi_positive_ratio, tf.int32) - n_pos,
            self.negatives_without_positives)
        n_neg = tf.minimum(n_neg, self.rois_per_image - n_pos)
        negative = tf.random.experimental.stateless_shuffle(negative, neg_seed)[:n_neg]
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
        rois = pad_rows(tf.concat([pos_rois, neg_rois], axis=0), t)
        return (rois, pad_rows(class_ids, t), pad_rows(deltas, t), pad_rows(masks, t))

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        out = tf.map_fn(self._one_image,
                        (proposals, tf.cast(gt_class_ids, tf.int32), gt_boxes,
                         tf.cast(gt_masks, tf.float32), self._image_seeds(proposals)),
                        fn_output_signature=(tf.float32, tf.int32, tf.float32, tf.float32))
        t = self.rois_per_image
        return [tf.ensure_shape(out[0], [None, t, 4]), tf.ensure_shape(out[1], [None, t]),
                tf.ensure_shape(out[2], [None, t, 4]),
                tf.ensure_shape(out[3], [None, t, *self.mask_shape])]

    def _image_seeds(self, proposals: tf.Tensor) -> tf.Tensor:
        """[B, 2] int64 stateless seeds for this call: the generator's next seed, split per
        image and per replica (replicas share the generator state)."""
        base = tf.cast(self.seed_generator.next(), tf.int64)
        context = tf.distribute.get_replica_context()
        replica = tf.cast(context.replica_id_in_sync_group if context else 0, tf.int64)
        image = tf.range(tf.shape(proposals, out_type=tf.int64)[0])
        return tf.stack([tf.fill(tf.shape(image), base[0]),
                         (base[1] * 1024 + replica) * 4096 + image], axis=1)

    def compute_output_shape(self, input_shape):
        b, t = input_shape[0][0], self.rois_per_image
        return [(b, t, 4), (b, t), (b, t, 4), (b, t, *self.mask_shape)]

    def get_config(self):
        return {**super().get_config(), "rois_per_image": self.rois_per_image,
                "roi_positive_ratio": self.roi_positive_ratio,
                "bbox_std_dev": self.bbox_std_dev, "mask_shape": self.mask_shape,
                "use_mini_mask": self.use_mini_mask,
                "negatives_without_positives": self.negatives_without_positives,
                "proposals_with_gt": self.proposals_with_gt, "seed": self.seed}
