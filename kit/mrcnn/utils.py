"""Pure-numpy helpers of Mask R-CNN: dataset API, box geometry, anchors, resizing
(molding images and the image meta: kit.mrcnn.molding).

Box formats (named, converted only at the boundaries):
- ``"y1x1y2x2"``: [y1, x1, y2, x2] corners in pixels, the format used inside the model
  (y2/x2 exclusive, area = (y2 - y1) * (x2 - x1), no +1);
- ``"x1y1x2y2"``: [x1, y1, x2, y2] corners in pixels;
- ``"xywh"``: [x, y, w, h], top-left corner plus size in pixels (the Kaggle/RSNA format).
"Normalised" boxes are y1x1y2x2 divided by (H-1, W-1) as ``norm_boxes`` defines.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

BOX_FORMATS = ("y1x1y2x2", "x1y1x2y2", "xywh")


# ------------------------------------------------------------------------------------- dataset
class Dataset:
    """Matterport's dataset API: register classes and images, then ``prepare()``.

    Subclasses override ``load_image`` (-> HxWx3 uint8) and ``load_mask``
    (-> bool HxWxN masks, int32 (N,) class ids).
    """

    def __init__(self) -> None:
        self._image_ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self.image_info: list[dict] = []
        self.class_info: list[dict] = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids: dict[str, list[int]] = {}

    def add_class(self, source: str, class_id: int, class_name: str) -> None:
        if "." in source:
            raise ValueError(f"source name {source!r} cannot contain a dot")
        if any(c["source"] == source and c["id"] == class_id for c in self.class_info):
            return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source: str, image_id: Any, path: Any, **kwargs: Any) -> None:
        self.image_info.append({"id": image_id, "source": source, "path": path, **kwargs})

    def image_reference(self, image_id: int) -> str:
        """A string naming the image for debugging (its path)."""
        return str(self.image_info[image_id]["path"])

    def prepare(self) -> None:
        """Build the internal ids; call after all add_class/add_image calls."""
        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [c["name"].split(",")[0] for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {f"{c['source']}.{c['id']}": i
                                      for i, c in enumerate(self.class_info)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": i
                                      for i, info in enumerate(self.image_info)}
        self.sources = sorted({c["source"] for c in self.class_info})
        self.source_class_ids = {
            source: [i for i, c in enumerate(self.class_info) if i == 0 or c["source"] == source]
            for source in self.sources}

    def map_source_class_id(self, source_class_id: str) -> int:
        """Internal class id of ``"source.class_id"``."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id: int, source: str) -> int:
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(f"class {class_id} belongs to source {info['source']!r}, not {source!r}")
        return info["id"]

    @property
    def image_ids(self) -> np.ndarray:
        return self._image_ids

    def source_image_link(self, image_id: int) -> Any:
        """Path or URL of the image in its source."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id: int) -> np.ndarray:
        """HxWx3 uint8 RGB image (grey images are stacked to 3 channels, alpha dropped)."""
        image = np.asarray(Image.open(self.image_info[image_id]["path"]))
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        return image[..., :3].astype(np.uint8)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(bool HxWxN masks, int32 (N,) class ids); the base class has no instances."""
        info = self.image_info[image_id]
        h, w = info.get("height", 0), info.get("width", 0)
        return np.zeros((h, w, 0), dtype=bool), np.zeros(0, dtype=np.int32)


# ------------------------------------------------------------------------------ box geometry
def convert_boxes(boxes: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert (N, 4) boxes between the named formats in BOX_FORMATS (float64 result)."""
    for fmt in (src, dst):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; choose from {BOX_FORMATS}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if src == "y1x1y2x2":
        y1, x1, y2, x2 = b.T
    elif src == "x1y1x2y2":
        x1, y1, x2, y2 = b.T
    else:
        x1, y1 = b[:, 0], b[:, 1]
        x2, y2 = x1 + b[:, 2], y1 + b[:, 3]
    if dst == "y1x1y2x2":
        cols = (y1, x1, y2, x2)
    elif dst == "x1y1x2y2":
        cols = (x1, y1, x2, y2)
    else:
        cols = (x1, y1, x2 - x1, y2 - y1)
    return np.stack(cols, axis=1)


def compute_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU matrix (N1, N2) of y1x1y2x2 boxes; a pair with zero union has IoU 0."""
    b1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    y1 = np.maximum(b1[:, None, 0], b2[None, :, 0])
    x1 = np.maximum(b1[:, None, 1], b2[None, :, 1])
    y2 = np.minimum(b1[:, None, 2], b2[None, :, 2])
    x2 = np.minimum(b1[:, None, 3], b2[None, :, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    union = area1[:, None] + area2[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_refinement(box: np.ndarray, gt_box: np.ndarray) -> np.ndarray:
    """Deltas (dy, dx, log(dh), log(dw)) that turn y1x1y2x2 ``box`` into ``gt_box`` (N, 4)."""
    box = np.asarray(box, dtype=np.float64)
    gt_box = np.asarray(gt_box, dtype=np.float64)
    h, w = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    cy, cx = box[:, 0] + 0.5 * h, box[:, 1] + 0.5 * w
    gh, gw = gt_box[:, 2] - gt_box[:, 0], gt_box[:, 3] - gt_box[:, 1]
    gcy, gcx = gt_box[:, 0] + 0.5 * gh, gt_box[:, 1] + 0.5 * gw
    return np.stack([(gcy - cy) / h, (gcx - cx) / w, np.log(gh / h), np.log(gw / w)], axis=1)


def apply_box_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Inverse of box_refinement: apply (N, 4) deltas to (N, 4) y1x1y2x2 boxes."""
    boxes = np.asarray(boxes, dtype=np.float64)
    deltas = np.asarray(deltas, dtype=np.float64)
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cy = boxes[:, 0] + 0.5 * h + deltas[:, 0] * h
    cx = boxes[:, 1] + 0.5 * w + deltas[:, 1] * w
    h, w = h * np.exp(deltas[:, 2]), w * np.exp(deltas[:, 3])
    return np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=1)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS on y1x1y2x2 boxes: indices kept (int32), highest score first.

    A box is dropped when its IoU with an already kept box is strictly greater than threshold
    (tf.image.non_max_suppression's rule). Equal scores keep the lower index first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        iou = compute_overlaps(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= threshold]
    return np.array(keep, dtype=np.int32)


def norm_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel y1x1y2x2 -> normalised: (y1, x1) / (H-1, W-1) and (y2-1, x2-1) / (H-1, W-1)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return ((np.asarray(boxes, dtype=np.float32) - shift) / scale).astype(np.float32)


def denorm_boxes(boxes: np.ndarray, shape: tuple[int, int], rounded: bool = True) -> np.ndarray:
    """Inverse of norm_boxes: int32 pixels (Matterport's), or float64 with ``rounded=False``."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float64)
    shift = np.array([0, 0, 1, 1], dtype=np.float64)
    exact = np.asarray(boxes, dtype=np.float64) * scale + shift
    return np.around(exact).astype(np.int32) if rounded else exact


# ----------------------------------------------------------------------------------- anchors
def generate_anchors(scale: float, ratios: list[float], shape: tuple[int, int],
                     feature_stride: int, anchor_stride: int) -> np.ndarray:
    """(H*W*len(ratios), 4) y1x1y2x2 pixel anchors of one level, centred on cell * stride.

    Order: feature row, then column, then ratio (the RPN head's reshape order).
    ``ratios`` are width/height; every anchor has area scale**2.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    heights = scale / np.sqrt(ratios)
    widths = scale * np.sqrt(ratios)
    ys = np.arange(0, shape[0], anchor_stride) * feature_stride
    xs = np.arange(0, shape[1], anchor_stride) * feature_stride
    cy, cx = np.meshgrid(ys, xs, indexing="ij")                   # (rows, cols)
    cy = np.repeat(cy.reshape(-1), len(ratios))
    cx = np.repeat(cx.reshape(-1), len(ratios))
    h = np.tile(heights, ys.size * xs.size)
    w = np.tile(widths, ys.size * xs.size)
    return np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=1)


def generate_pyramid_anchors(scales: list[float], ratios: list[float],
                             feature_shapes: np.ndarray, feature_strides: list[int],
                             anchor_stride: int) -> np.ndarray:
    """Anchors of all levels concatenated P2..P6 (level order, then generate_anchors order)."""
    if len(scales) != len(feature_shapes) or len(scales) != len(feature_strides):
        raise ValueError("need one anchor scale per pyramid level: "
                         f"{len(scales)} scales, {len(feature_shapes)} levels")
    return np.concatenate([
        generate_anchors(s, ratios, tuple(shape), stride, anchor_stride)
        for s, shape, stride in zip(scales, feature_shapes, feature_strides)], axis=0)


# --------------------------------------------------------------------------- resize and masks
def _resize_array(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize HxW or HxWxC to ``size`` (h, w): bilinear (PIL) or nearest neighbour."""
    h, w = array.shape[:2]
    if nearest:
        rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
        cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
        return array[rows][:, cols]
    channels = array.reshape(h, w, -1)
    out = np.stack([np.asarray(Image.fromarray(channels[..., c].astype(np.float32), mode="F")
                               .resize((size[1], size[0]), Image.BILINEAR))
                    for c in range(channels.shape[-1])], axis=-1)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(array.dtype).reshape(size + array.shape[2:])


def resize_image(image: np.ndarray, min_dim: int | None = None, max_dim: int | None = None,
                 min_scale: float | None = None, mode: str = "square",
                 rng: np.random.Generator | None = None):
    """Resize keeping the aspect ratio, then pad (or crop) as ``mode`` says.

    Modes: "none" (unchanged), "square" (scale up to min_dim, down to fit max_dim, pad to
    max_dim x max_dim), "pad64" (scale up to min_dim, pad sides to multiples of 64), "crop"
    (scale up to min_dim, random min_dim x min_dim crop; ``rng`` picks it).
    Returns (image, window (y1, x1, y2, x2) of the real image inside the result in pixels,
    scale, padding [(top, bottom), (left, right), (0, 0)], crop (y, x, h, w) or None).
    """
    dtype = image.dtype
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    padding = [(0, 0), (0, 0), (0, 0)]
    if mode == "none":
        return image, window, 1.0, padding, None
    scale = max(1.0, min_dim / min(h, w)) if min_dim else 1.0
    if min_scale and scale < min_scale:
        scale = float(min_scale)
    if max_dim and mode == "square" and round(max(h, w) * scale) > max_dim:
        scale = max_dim / max(h, w)
    if scale != 1:
        image = _resize_array(image, (round(h * scale), round(w * scale)), nearest=False)
    h, w = image.shape[:2]
    if mode == "square":
        top, left = (max_dim - h) // 2, (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
    elif mode == "pad64":
        ph, pw = (-h) % 64, (-w) % 64
        padding = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)]
    elif mode == "crop":
        rng = rng or np.random.default_rng()
        y, x = int(rng.integers(0, h - min_dim + 1)), int(rng.integers(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        return image[y:y + min_dim, x:x + min_dim], (0, 0, min_dim, min_dim), scale, padding, crop
    else:
        raise ValueError(f"IMAGE_RESIZE_MODE {mode!r} is not one of none, square, pad64, crop")
    image = np.pad(image, padding[:image.ndim], mode="constant")
    window = (padding[0][0], padding[1][0], padding[0][0] + h, padding[1][0] + w)
    return image.astype(dtype), window, scale, padding, None


def resize_mask(mask: np.ndarray, scale: float, padding: list, crop: tuple | None = None):
    """Apply resize_image's scale/padding/crop to bool HxWxN masks (nearest neighbour)."""
    h, w = mask.shape[:2]
    mask = _resize_array(mask, (round(h * scale), round(w * scale)), nearest=True)
    if crop is not None:
        y, x, ch, cw = crop
        return mask[y:y + ch, x:x + cw]
    return np.pad(mask, padding[:mask.ndim], mode="constant")


def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """(N, 4) int32 y1x1y2x2 boxes of bool HxWxN masks (exclusive y2/x2; empty mask -> zeros)."""
    boxes = np.zeros((mask.shape[-1], 4), dtype=np.int32)
    for i in range(mask.shape[-1]):
        rows = np.where(mask[:, :, i].any(axis=1))[0]
        cols = np.where(mask[:, :, i].any(axis=0))[0]
        if rows.size:
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


def minimize_mask(bbox: np.ndarray, mask: np.ndarray, mini_shape: tuple[int, int]) -> np.ndarray:
    """Crop each HxWxN mask to its y1x1y2x2 box and resize to ``mini_shape`` (bool)."""
    out = np.zeros(tuple(mini_shape) + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4].astype(int)
        if y2 <= y1 or x2 <= x1:
            raise ValueError(f"instance {i}: empty box {bbox[i].tolist()} cannot be minimised")
        crop = mask[y1:y2, x1:x2, i].astype(np.float32)
        out[:, :, i] = _resize_array(crop, tuple(mini_shape), nearest=False) >= 0.5
    return out


def expand_mask(bbox: np.ndarray, mini_mask: np.ndarray, image_shape: tuple) -> np.ndarray:
    """Inverse of minimize_mask: paste mini masks back into full-size bool HxWxN masks."""
    out = np.zeros(tuple(image_shape[:2]) + (mini_mask.shape[-1],), dtype=bool)
    for i in range(mini_mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4].astype(int)
        m = _resize_array(mini_mask[:, :, i].astype(np.float32), (y2 - y1, x2 - x1), False)
        out[y1:y2, x1:x2, i] = m >= 0.5
    return out


def unmold_mask(mask: np.ndarray, bbox: np.ndarray, image_shape: tuple,
                threshold: float = 0.5) -> np.ndarray:
    """A float (h, w) mask predicted for y1x1y2x2 ``bbox`` -> bool full image mask."""
    y1, x1, y2, x2 = np.asarray(bbox).astype(int)
    out = np.zeros(tuple(image_shape[:2]), dtype=bool)
    if y2 <= y1 or x2 <= x1:
        return out
    m = _resize_array(np.asarray(mask, dtype=np.float32), (y2 - y1, x2 - x1), nearest=False)
    out[y1:y2, x1:x2] = m >= threshold
    return out
