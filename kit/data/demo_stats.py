"""Label statistics of the real stage-2 training labels, built in: the ``rsna`` demo draws its
readers' boxes from these (no real CSV is read at run time).

Fitted by ``python bench/demo_rsna.py --fit`` on stage_2_train_labels.csv (9,555 boxes on 6,012
positive images of 26,684). A box is drawn as a Gaussian copula: the side of the image (the box
centre left or right of x = 512) picks a table of quantiles of width, height, centre x and centre
y (at ``PROBS``, 1024-px frame), a correlated normal vector picks the point in each. The normal
vector is a per-image part (boxes of one image are alike: the real within-image correlations of
the two boxes of a two-box image are ``SHARED``), a per-box part (correlations ``CORR``) and a
shift by the image's box count (``COUNT_SHIFT``: one-box images have smaller boxes than two-box
images, three or more smaller still). Boxes of one image never overlap (as in the real labels).
"""
from __future__ import annotations

import math

import numpy as np

POSITIVE_FRACTION = 0.225           # real: 6,012 / 26,684 = 22.53 % of images have a box
BOX_COUNT_P = {1: 2614 / 6012, 2: 3266 / 6012, 3: 119 / 6012, 4: 13 / 6012}   # boxes per positive image
NEGATIVE_CLASSES = {"No Lung Opacity / Not Normal": 11821 / 20672, "Normal": 8851 / 20672}
SINGLE_LEFT = 0.619                 # one-box images: the box in the left half of the image
TWO_SAME_SIDE = 0.021               # two-box images: both boxes on one side (else one per side)
FRAME = 1024

PROBS = np.array([0, .005, .01, .02, .035, .05, .075, .1, .15, .2, .25, .3, .35, .4, .45, .5, .55,
                  .6, .65, .7, .75, .8, .85, .9, .925, .95, .965, .98, .99, .995, 1])
# QUANTILES[side] rows: width, height, centre x, centre y at PROBS (1024 px); L: centre x < 512
QUANTILES = {
    "L": np.array([
        [40, 90, 96, 105, 115, 123, 131, 140, 152, 163, 171, 181, 189, 197, 204, 212, 218, 226,
         233, 242, 251, 262, 273, 287, 296, 308, 319, 332, 350, 368, 528],
        [45, 68, 77, 91, 106, 117, 129, 138, 157, 174, 192, 208, 227, 243, 262, 282, 305, 331,
         358, 388, 419, 457, 495, 542, 573, 605, 631, 668, 696, 726, 867],
        [88, 165, 176, 195, 210, 220, 233, 244, 259, 272, 282, 290, 298, 305, 312, 319, 328, 335,
         344, 352, 360, 370, 383, 398, 410, 425, 435, 450, 467, 483, 506],
        [130, 213, 249, 286, 316, 340, 364, 382, 409, 430, 451, 468, 485, 500, 514, 528, 544, 560,
         575, 591, 608, 628, 650, 678, 696, 720, 738, 762, 788, 821, 945]], dtype=float),
    "R": np.array([
        [50, 83, 94, 105, 116, 126, 135, 146, 161, 173, 182, 192, 200, 209, 217, 224, 232, 240,
         248, 257, 267, 277, 289, 303, 312, 326, 338, 356, 371, 387, 467],
        [52, 77, 88, 101, 117, 129, 144, 157, 178, 200, 218, 238, 257, 275, 296, 318, 343, 368,
         398, 426, 459, 496, 533, 575, 607, 642, 666, 700, 740, 768, 942],
        [513, 553, 567, 586, 602, 614, 626, 636, 652, 664, 675, 684, 692, 700, 707, 714, 722, 728,
         736, 744, 753, 764, 776, 790, 800, 812, 821, 838, 853, 866, 900],
        [141, 235, 258, 292, 321, 344, 370, 390, 420, 442, 460, 476, 492, 506, 520, 534, 548, 562,
         578, 594, 610, 628, 652, 678, 698, 720, 740, 764, 792, 834, 924]], dtype=float),
}
CORR = {"L": np.array([[1.0, 0.57, -0.18, 0.01], [0.57, 1.0, -0.01, -0.18],
                       [-0.18, -0.01, 1.0, -0.14], [0.01, -0.18, -0.14, 1.0]]),
        "R": np.array([[1.0, 0.6, 0.1, 0.04], [0.6, 1.0, 0.02, -0.11],
                       [0.1, 0.02, 1.0, 0.15], [0.04, -0.11, 0.15, 1.0]])}
SHARED = np.array([0.64, 0.77, 0.56, 0.71])     # within-image correlation of w, h, cx, cy
COUNT_SHIFT = {1: np.array([-0.207, -0.475, -0.004, 0.088]), 2: np.array([0.129, 0.238, -0.001, -0.022]),
               3: np.array([-0.744, -0.768, 0.034, -0.211])}   # 3 stands for 3 or more
_BOX_SHARE = {1: 2614 / 9555, 2: 6532 / 9555, 3: 409 / 9555}   # boxes in images of each count
_BETWEEN = sum(share * COUNT_SHIFT[k] ** 2 for k, share in _BOX_SHARE.items())
_SCALE = np.sqrt(1 - _BETWEEN)                  # keeps every marginal a unit normal overall
_CHOL = {side: np.linalg.cholesky(c) for side, c in CORR.items()}
_CHOL_SHARED = np.linalg.cholesky((CORR["L"] + CORR["R"]) / 2)


def allocate(rng: np.random.Generator, n: int, probs) -> np.ndarray:
    """Indices into ``probs`` for ``n`` items: each category gets its share of ``n`` within one
    item (largest remainder), in a seeded random order."""
    p = np.asarray(probs, dtype=float) / np.sum(probs)
    exact = n * p
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return rng.permutation(np.repeat(np.arange(len(p)), counts))


def _sides(rng: np.random.Generator, k: int) -> list[str]:
    """The side (L/R) of each of an image's ``k`` boxes, as the real images place them."""
    first, other = ("L", "R") if rng.random() < 0.5 else ("R", "L")
    if k == 1:
        return ["L" if rng.random() < SINGLE_LEFT else "R"]
    if k == 2:
        return [first, first] if rng.random() < TWO_SAME_SIDE else [first, other]
    return [first, other, first, other][:k]       # 3: two in one lung, 4: two in each


def overlaps(box: np.ndarray, others: list[np.ndarray]) -> bool:
    """Whether ``box`` (x, y, w, h) intersects any of ``others`` (touching is not overlapping)."""
    x, y, w, h = box
    return any(x < ox + ow and ox < x + w and y < oy + oh and oy < y + h for ox, oy, ow, oh in others)


def sample_boxes(rng: np.random.Generator, k: int, tries: int = 50) -> np.ndarray:
    """``k`` whole-pixel label boxes (k, 4) ``x, y, w, h`` in the 1024 frame, like one real image's."""
    shift = COUNT_SHIFT[min(k, 3)]
    shared = _CHOL_SHARED @ rng.standard_normal(4)
    boxes: list[np.ndarray] = []
    used: set[str] = set()
    for side in _sides(rng, k):
        rho = SHARED if side not in used else np.zeros(4)   # a second box in one lung: its own place
        used.add(side)
        for _ in range(tries):
            z = np.sqrt(rho) * shared + np.sqrt(1 - rho) * (_CHOL[side] @ rng.standard_normal(4))
            box = quantile_box(side, shift + _SCALE * z)
            if not overlaps(box, boxes):
                break
        boxes.append(box)
    return np.array(boxes, dtype=float).reshape(-1, 4)


def quantile_box(side: str, z: np.ndarray) -> np.ndarray:
    """The box at normal scores ``z`` (w, h, cx, cy) of ``side``'s tables: whole pixels, inside the frame."""
    q = QUANTILES[side]
    w, h, cx, cy = (np.interp(0.5 * (1 + math.erf(z[i] / math.sqrt(2))), PROBS, q[i]) for i in range(4))
    w, h = round(w), round(h)
    x = float(np.clip(round(cx - w / 2), 0, FRAME - w))
    y = float(np.clip(round(cy - h / 2), 0, FRAME - h))
    return np.array([x, y, float(w), float(h)])
