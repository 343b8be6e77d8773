"""RSNA -> kit.mrcnn Dataset: prepared (cached) images and their boxes as filled rectangle masks.

Labels are in the competition's 1024-px frame (x, y, w, h, top-left); the cached image is S x S,
so a label maps to cache pixels by S / 1024 whatever the DICOM's own size was.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from kit.mrcnn import utils
from kit.data.prepare import as_rgb
from kit.paths import IMAGE_SIZE

EMPTY = np.zeros((0, 4), dtype=np.float64)


def boxes_to_masks(boxes_xywh: np.ndarray, side: int) -> np.ndarray:
    """Filled rectangles, bool (side, side, k), from boxes in the 1024-px frame."""
    k = len(boxes_xywh)
    masks = np.zeros((side, side, k), dtype=bool)
    scale = side / IMAGE_SIZE
    for i, (x, y, w, h) in enumerate(np.asarray(boxes_xywh, dtype=np.float64)):
        x1, y1 = int(round(x * scale)), int(round(y * scale))
        x2, y2 = int(round((x + w) * scale)), int(round((y + h) * scale))
        masks[max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1), i] = True
    return masks


class RSNADataset(utils.Dataset):
    """One class ("Lung Opacity"); images come from ``load_gray(patientId) -> uint8 (S, S)``.

    ``image_classes`` (patientId -> index in kit.data.labels.CLASSES) feeds the image-level
    classifier; an image without one gets -1 (no classifier loss)."""

    def __init__(self, load_gray: Callable[[str], np.ndarray], side: int,
                 patient_ids: Sequence[str], boxes: dict[str, np.ndarray],
                 image_classes: dict[str, int] | None = None):
        super().__init__()
        self._load_gray = load_gray
        self.side = side
        self.add_class("rsna", 1, "Lung Opacity")
        classes = image_classes or {}
        for pid in patient_ids:
            self.add_image("rsna", image_id=pid, path=None, boxes=boxes.get(pid, EMPTY),
                           image_class=int(classes.get(pid, -1)))
        self.prepare()

    def patient_id(self, image_id: int) -> str:
        return self.image_info[image_id]["id"]

    def load_image(self, image_id: int) -> np.ndarray:
        return as_rgb(self._load_gray(self.patient_id(image_id)))

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        boxes = self.image_info[image_id]["boxes"]
        return boxes_to_masks(boxes, self.side), np.ones(len(boxes), dtype=np.int32)
