"""The embedded synthetic data set: RSNA-like chest films in the exact Kaggle layout.

``python -m kit demo-data --out data/demo`` writes stage_2_train_images/, stage_2_test_images/,
the three Kaggle CSVs and demo_test_labels.csv (the hidden test ground truth, same format as the
train labels). Boxes are ``x, y, width, height`` (top-left) in the competition's 1024x1024 pixel
frame, like the real labels; the DICOMs are stored at ``--size`` px, so a label maps to image
pixels by size/1024 (downstream code always maps with the image's own Rows/Columns).

A film: dark background, a bright body, two darker lung fields, heart and spine, rib arcs,
smooth and fine noise, per-image exposure. About 28% of images are positive, with 1-4 opacities:
soft, textured bright elliptical blobs inside the lung fields whose bounding box is the label.
Everything derives from ``seed``: the same arguments give the same bytes.
"""
from __future__ import annotations

import argparse
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kit import dicom, paths
from kit.errors import KitError
from kit.io import write_text

POSITIVE_FRACTION = 0.28
BOX_COUNT_P = {1: 0.43, 2: 0.54, 3: 0.02, 4: 0.01}    # boxes per positive image (real: 43/54/2/0.2 %)
NEGATIVE_CLASSES = (("No Lung Opacity / Not Normal", 0.57), ("Normal", 0.43))
FRAME = float(paths.IMAGE_SIZE)                        # label coordinates live in this frame


@dataclass(frozen=True)
class Lung:
    """A lung field: ellipse centre and semi-axes in 1024-frame pixels."""
    cx: float
    cy: float
    ax: float
    ay: float


@dataclass(frozen=True)
class Case:
    """One synthetic patient: header fields, anatomy and ground-truth boxes (k, 4) x,y,w,h (1024 px)."""
    patient_id: str
    age: int
    sex: str
    view: str
    cls: str
    lungs: tuple[Lung, Lung]
    boxes: np.ndarray


def sample_case(rng: np.random.Generator, positive: bool) -> Case:
    """Draw a patient: id (uuid4 from ``rng``), header fields, lung fields and opacity boxes."""
    pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < (0.7 if positive else 0.4) else "PA"
    sex = "M" if rng.random() < 0.55 else "F"
    age = int(np.clip(round(rng.normal(47, 16)), 2, 92))
    dx, dy, s = rng.normal(0, 15), rng.normal(0, 20), rng.uniform(0.92, 1.08)
    lungs = tuple(Lung(cx=512 + side * 180 * s + dx + rng.normal(0, 8), cy=470 + dy,
                       ax=rng.uniform(130, 155) * s, ay=rng.uniform(270, 310) * s)
                  for side in (-1, 1))
    if positive:
        k = int(rng.choice(list(BOX_COUNT_P), p=list(BOX_COUNT_P.values())))
        boxes = _place_boxes(rng, lungs, k)
        cls = "Lung Opacity"
    else:
        boxes = np.zeros((0, 4))
        names, p = zip(*NEGATIVE_CLASSES)
        cls = str(rng.choice(names, p=p))
    return Case(pid, age, sex, view, cls, lungs, boxes)


def _place_boxes(rng: np.random.Generator, lungs: tuple[Lung, Lung], k: int) -> np.ndarray:
    """k whole-pixel boxes inside the lung fields: one per lung first, then upper/lower halves."""
    first = int(rng.integers(2))
    sides = [first, 1 - first, first, 1 - first][:k]
    boxes = []
    for i, side in enumerate(sides):
        lung = lungs[side]
        shared = sides.count(side) > 1
        w = rng.uniform(150, min(290, 1.8 * lung.ax))
        if shared:   # two boxes in one lung: stacked, upper then lower
            h = rng.uniform(150, 0.8 * lung.ay)
            cy = lung.cy + (-0.45 if i < 2 else 0.45) * lung.ay
        else:
            h = rng.uniform(180, min(350, 1.3 * lung.ay))
            cy = lung.cy + rng.uniform(-0.3, 0.3) * lung.ay
        cx = lung.cx + rng.uniform(-0.25, 0.25) * lung.ax
        x = float(np.clip(round(cx - w / 2), 0, FRAME - round(w)))
        y = float(np.clip(round(cy - h / 2), 0, FRAME - round(h)))
        boxes.append([x, y, float(round(w)), float(round(h))])
    return np.array(boxes, dtype=np.float64)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise (size, size): a cells x cells grid upsampled bilinearly."""
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR))


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ax: float, ay: float,
             soft: float) -> np.ndarray:
    """Soft ellipse mask in [0, 1]: 1 inside, ramping to 0 over ``soft`` (relative radius)."""
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return np.clip((1 + soft - r) / soft, 0, 1)


def render(case: Case, size: int, rng: np.random.Generator) -> np.ndarray:
    """The film of ``case`` as uint8 (size, size); boxes map to pixels by size/1024."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (FRAME / size)
    xx, yy = np.meshgrid(coords, coords)
    img = np.full((size, size), rng.uniform(15, 35), dtype=np.float32)
    body = _ellipse(xx, yy, 512, 600, rng.uniform(420, 470), 620, 0.08)
    img += body * rng.uniform(120, 145)
    heart_size = 1.15 if case.view == "AP" else 1.0      # AP films magnify the heart
    heart = _ellipse(xx, yy, 550, 720, 140 * heart_size, 120 * heart_size, 0.3)
    lungs = sum(_ellipse(xx, yy, l.cx, l.cy, l.ax, l.ay, 0.15) for l in case.lungs) * (1 - heart)
    img -= lungs * body * rng.uniform(70, 90)
    img += _ellipse(xx, yy, 512, 600, 38, 600, 0.5) * 25                      # spine
    period = rng.uniform(60, 80)
    ribs = np.sin(2 * np.pi * (yy + 0.0009 * (xx - 512) ** 2) / period)
    img += np.maximum(ribs, 0) * body * (0.3 + 0.7 * lungs) * rng.uniform(10, 16)
    for x, y, w, h in case.boxes:
        r2 = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2
        profile = np.clip(1 - r2, 0, 1) ** 0.7         # 0 outside the box's inscribed ellipse
        texture = 0.7 + 0.3 * np.tanh(_smooth_noise(rng, size, 12))
        img += profile * texture * (0.15 + 0.85 * np.minimum(lungs, 1)) * rng.uniform(75, 100)
    img += _smooth_noise(rng, size, 6) * 8 + rng.normal(0, 4, size=(size, size)).astype(np.float32)
    gain, gamma = rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.1)
    img = 255 * (np.clip(img * gain, 0, 255) / 255) ** gamma
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _label_rows(case: Case) -> list[str]:
    """Kaggle label rows: ``pid,264.0,152.0,213.0,379.0,1`` per box, or ``pid,,,,,0``."""
    if not len(case.boxes):
        return [f"{case.patient_id},,,,,0"]
    return [f"{case.patient_id},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1" for x, y, w, h in case.boxes]


_OUTPUTS = (paths.TRAIN_IMAGES, paths.TEST_IMAGES, paths.TRAIN_LABELS, paths.CLASS_INFO,
            paths.SAMPLE_SUBMISSION, paths.DEMO_TEST_LABELS)


def make_dataset(out: Path, n_train: int = 400, n_test: int = 100, size: int = 256, seed: int = 0,
                 force: bool = False) -> None:
    """Write the synthetic data set into ``out`` in Kaggle's layout (see the module docstring).

    Refuses a non-empty ``out`` unless ``force`` (then only the data set's own files are replaced).
    """
    out = Path(out)
    if n_train < 1 or n_test < 1 or size < 32:
        raise KitError(f"need n_train >= 1, n_test >= 1 and size >= 32 (got {n_train}, {n_test}, {size})")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise KitError("folder is not empty; pass --force to replace the demo data there", path=out)
        for name in _OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    master = np.random.default_rng([seed, 0])
    splits = {}
    for index, (split, n) in enumerate(((paths.TRAIN_IMAGES, n_train), (paths.TEST_IMAGES, n_test))):
        positive = np.zeros(n, dtype=bool)
        positive[master.permutation(n)[:round(POSITIVE_FRACTION * n)]] = True
        rngs = [np.random.default_rng([seed, index + 1, i]) for i in range(n)]
        splits[split] = (rngs, [sample_case(rng, bool(p)) for rng, p in zip(rngs, positive)])
    with tqdm(total=n_train + n_test, desc="demo-data", unit="img") as bar:
        for split, (rngs, cases) in splits.items():
            (out / split).mkdir(parents=True, exist_ok=True)
            for rng, case in zip(rngs, cases):
                dicom.write_dicom(out / split / f"{case.patient_id}.dcm", render(case, size, rng),
                                  case.patient_id, case.age, case.sex, case.view)
                bar.update()
    header = "patientId,x,y,width,height,Target\n"
    train, test = splits[paths.TRAIN_IMAGES][1], splits[paths.TEST_IMAGES][1]
    write_text(out / paths.DEMO_TEST_LABELS,
               header + "".join(r + "\n" for c in test for r in _label_rows(c)))
    write_text(out / paths.SAMPLE_SUBMISSION, "patientId,PredictionString\n"
               + "".join(f"{c.patient_id},0.5 0 0 100 100\n" for c in test))
    write_text(out / paths.CLASS_INFO, "patientId,class\n" + "".join(
        f"{c.patient_id},{c.cls}\n" for c in train for _ in _label_rows(c)))
    write_text(out / paths.TRAIN_LABELS,                 # last: its presence marks a finished set
               header + "".join(r + "\n" for c in train for r in _label_rows(c)))


def add_demo_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=paths.DEMO_DIR, help="output folder (default data/demo)")
    parser.add_argument("--n-train", type=int, default=400, help="train images (default 400)")
    parser.add_argument("--n-test", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--size", type=int, default=256,
                        help="stored image side in px (labels stay in the 1024 frame; default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace the data set in a non-empty --out")


def run_demo_data(args: argparse.Namespace) -> int:
    make_dataset(args.out, args.n_train, args.n_test, args.size, args.seed, force=args.force)
    print(f"wrote {args.n_train} train + {args.n_test} test images ({args.size} px) to {args.out}")
    return 0
