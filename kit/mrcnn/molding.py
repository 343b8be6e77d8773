"""Molding images for the network and unmolding its detections, pure numpy (Matterport's
``mold_image``/``mold_inputs``/``unmold_detections`` and the image meta vector).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kit.mrcnn import utils

def mold_image(images: np.ndarray, config: Any) -> np.ndarray:
    """RGB pixels -> float32 network input (mean pixel subtracted)."""
    return images.astype(np.float32) - np.asarray(config.MEAN_PIXEL, dtype=np.float32)


def unmold_image(normalized_images: np.ndarray, config: Any) -> np.ndarray:
    """Inverse of mold_image, rounded and clipped to uint8."""
    pixels = np.round(normalized_images + np.asarray(config.MEAN_PIXEL))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def compose_image_meta(image_id: int, original_image_shape: tuple, image_shape: tuple,
                       window: tuple, scale: float, active_class_ids: np.ndarray) -> np.ndarray:
    """1-D float meta: id, original (h, w, c), molded (h, w, c), window (y1, x1, y2, x2) in
    molded pixels, scale, active class ids (length NUM_CLASSES)."""
    return np.array([image_id, *original_image_shape, *image_shape, *window, scale,
                     *active_class_ids], dtype=np.float32)


def parse_image_meta(meta: np.ndarray) -> dict[str, np.ndarray]:
    """Split a (B, META) array made by compose_image_meta into its named parts."""
    meta = np.asarray(meta)
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


def mold_inputs(images: list[np.ndarray], config: Any
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (HxWx3) -> (molded float32 (B,H,W,3), image metas (B,META), windows (B,4))."""
    molded, metas, windows = [], [], []
    for image in images:
        resized, window, scale, _, _ = utils.resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
            min_scale=config.IMAGE_MIN_SCALE, mode=config.IMAGE_RESIZE_MODE)
        molded.append(mold_image(resized, config))
        windows.append(window)
        metas.append(compose_image_meta(0, image.shape, resized.shape, window, scale,
                                        np.zeros(config.NUM_CLASSES, dtype=np.int32)))
    return np.stack(molded), np.stack(metas), np.array(windows, dtype=np.int32)


def unmold_detections(detections: np.ndarray, mrcnn_mask: np.ndarray | None,
                      original_image_shape: tuple, image_shape: tuple,
                      window: tuple) -> dict[str, np.ndarray]:
    """One image's DetectionLayer output -> {rois, class_ids, scores, masks}.

    ``detections``: (N, 6) [y1, x1, y2, x2, class_id, score] normalised to the molded image,
    zero-padded rows (class_id 0) are dropped. ``rois`` are int32 y1x1y2x2 ORIGINAL-image
    pixels (Matterport's), ``boxes`` the same boxes unrounded (float32: at 128 px one pixel is 8
    px of the 1024 frame, which rounding costs at IoU 0.75), ``scores`` float32, ``class_ids`` int32, ``masks`` bool HxWxN of the original
    image (or None when ``mrcnn_mask`` is None: box-only callers skip the work).
    """
    keep = np.where(detections[:, 4] > 0)[0]
    det = detections[keep]
    # window in normalised molded coordinates -> boxes relative to the window
    wy1, wx1, wy2, wx2 = utils.norm_boxes(np.array([window]), image_shape[:2])[0]
    boxes = (det[:, :4] - np.array([wy1, wx1, wy1, wx1])) / np.array(
        [wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    exact = utils.denorm_boxes(boxes, original_image_shape[:2], rounded=False)
    boxes = np.around(exact).astype(np.int32)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, exact, det, keep = boxes[valid], exact[valid], det[valid], keep[valid]
    class_ids = det[:, 4].astype(np.int32)
    out = {"rois": boxes, "boxes": exact.astype(np.float32), "class_ids": class_ids,
           "scores": det[:, 5].astype(np.float32), "masks": None}
    if mrcnn_mask is not None:
        h, w = original_image_shape[:2]
        masks = [utils.unmold_mask(mrcnn_mask[k, :, :, c], b, (h, w))
                 for k, c, b in zip(keep, class_ids, boxes)]
        out["masks"] = (np.stack(masks, axis=-1) if masks
                        else np.zeros((h, w, 0), dtype=bool))
    return out

