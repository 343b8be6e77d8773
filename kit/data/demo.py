"""The easy embedded synthetic data set (``demo-data``: kit.data.demo_data), in Kaggle's layout.

``python -m kit demo-data --out data/demo`` writes stage_2_train_images/, stage_2_test_images/,
the three Kaggle CSVs and demo_test_labels.csv (the hidden test ground truth, same format as the
train labels). Boxes are ``x, y, width, height`` (top-left) in the competition's 1024x1024 pixel
frame, like the real labels; the DICOMs are stored at ``--size`` px, so a label maps to image
pixels by size/1024 (downstream code always maps with the image's own Rows/Columns).

A film: dark background, a bright body, two darker lung fields, heart and spine, rib arcs,
smooth and fine noise, per-image exposure. About 28% of images are positive, with 1-4 opacities:
soft, textured bright elliptical blobs inside the lung fields whose bounding box is the label;
their peak contrast spreads from obvious to faint (a quarter are faint). The negatives follow
the real class split: "Normal" films are clean, while "No Lung Opacity / Not Normal" films carry
1-3 kinds of findings a detector can mistake for pneumonia (nodules and masses, basal pleural
effusions with a meniscus, cardiomegaly, tubes, central lines, ECG leads, a pacemaker), and a
fifth of the positives carry one such kind too. Everything derives from ``seed``: the same
arguments give the same bytes. ``--difficulty rsna`` writes the harder set of kit.data.demo_rsna.
"""
from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from kit import paths
from kit.data import dicom
from kit.errors import KitError
from kit.io import write_text

POSITIVE_FRACTION = 0.28
BOX_COUNT_P = {1: 0.43, 2: 0.54, 3: 0.02, 4: 0.01}    # boxes per positive image (real: 43/54/2/0.2 %)
NEGATIVE_CLASSES = (("No Lung Opacity / Not Normal", 0.57), ("Normal", 0.43))
FRAME = float(paths.IMAGE_SIZE)                        # label coordinates live in this frame
FAINT_FRACTION = 0.25              # opacities with a faint peak (40-60 gray levels, others 60-120)
FINDING_KINDS = {"nodule": 0.24, "effusion": 0.2, "cardiomegaly": 0.14, "tube": 0.16,
                 "line": 0.1, "ecg": 0.1, "pacemaker": 0.06}   # relative frequency of each kind
FINDING_COUNT_P = {1: 0.5, 2: 0.35, 3: 0.15}          # distinct kinds on a "Not Normal" film
POSITIVE_FINDING_FRACTION = 0.2    # positive films that also carry one kind of finding
DEVICES = ("tube", "line", "ecg", "pacemaker")


@dataclass(frozen=True)
class Lung:
    """A lung field: ellipse centre and semi-axes in 1024-frame pixels."""
    cx: float
    cy: float
    ax: float
    ay: float


@dataclass(frozen=True)
class Finding:
    """A non-pneumonia finding; ``points`` (x, y) and ``size`` in 1024-frame pixels.

    ``strength`` is the gray levels it adds where it covers the film (before exposure).
    nodule: points = (centre,), size = radius. effusion: points = ((lung cx, fluid level y),),
    size = how far the fluid surface rises at the lateral chest wall. cardiomegaly: no points,
    size = heart scale (> 1), strength unused. tube / line: a polyline, size = width.
    ecg / pacemaker: points[0] is the electrode / generator centre and the wire / lead runs
    along all points; size = electrode radius / generator half-width.
    """
    kind: str
    strength: float
    points: tuple[tuple[float, float], ...]
    size: float


@dataclass(frozen=True)
class Case:
    """One synthetic patient: header fields, anatomy, ground-truth boxes (k, 4) x,y,w,h (1024 px),
    each box's opacity peak contrast (gray levels before exposure) and the other findings."""
    patient_id: str
    age: int
    sex: str
    view: str
    cls: str
    lungs: tuple[Lung, Lung]
    boxes: np.ndarray
    contrast: tuple[float, ...]
    findings: tuple[Finding, ...]


def sample_case(rng: np.random.Generator, positive: bool) -> Case:
    """Draw a patient: id (uuid4 from ``rng``), header fields, lung fields, opacity boxes, findings."""
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
        contrast = tuple(float(rng.uniform(40, 60) if rng.random() < FAINT_FRACTION
                               else rng.uniform(60, 120)) for _ in range(k))
        cls = "Lung Opacity"
        kinds = int(rng.random() < POSITIVE_FINDING_FRACTION)
    else:
        boxes, contrast = np.zeros((0, 4)), ()
        names, p = zip(*NEGATIVE_CLASSES)
        cls = str(rng.choice(names, p=p))
        kinds = 0 if cls == "Normal" else int(rng.choice(list(FINDING_COUNT_P),
                                                          p=list(FINDING_COUNT_P.values())))
    return Case(pid, age, sex, view, cls, lungs, boxes, contrast, _sample_findings(rng, lungs, kinds))


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


def _sample_findings(rng: np.random.Generator, lungs: tuple[Lung, Lung], n: int) -> tuple[Finding, ...]:
    """``n`` distinct kinds of finding (weighted by FINDING_KINDS), each with its objects."""
    if n == 0:
        return ()
    weights = np.array(list(FINDING_KINDS.values()))
    kinds = rng.choice(list(FINDING_KINDS), size=n, replace=False, p=weights / weights.sum())
    return tuple(f for kind in kinds for f in _sample_kind(rng, str(kind), lungs))


def _curve(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float],
           n: int = 10) -> tuple[tuple[float, float], ...]:
    """``n`` points along the quadratic Bezier curve p0 -> p2 pulled towards p1."""
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t ** 2 * np.array(p2)
    return tuple((float(x), float(y)) for x, y in pts)


def _sample_kind(rng: np.random.Generator, kind: str, lungs: tuple[Lung, Lung]) -> list[Finding]:
    """The objects of one kind of finding, placed on the anatomy (1024-frame pixels)."""
    u = rng.uniform
    if kind == "nodule":      # 1-3 round, sharp-edged nodules or masses inside the lung fields
        out = []
        for _ in range(int(rng.integers(1, 4))):
            lung = lungs[int(rng.integers(2))]
            a, r = u(0, 2 * np.pi), 0.75 * np.sqrt(rng.random())
            centre = (lung.cx + r * lung.ax * np.cos(a), lung.cy + r * lung.ay * np.sin(a))
            out.append(Finding(kind, u(40, 110), (centre,), 14 + 56 * rng.random() ** 2))
        return out
    if kind == "effusion":    # fluid filling one or both lung bases, its surface rising laterally
        chosen = lungs if rng.random() < 0.3 else (lungs[int(rng.integers(2))],)
        return [Finding(kind, u(50, 80), ((l.cx, l.cy + u(0.2, 0.65) * l.ay),), u(0.2, 0.4) * l.ay)
                for l in chosen]
    if kind == "cardiomegaly":
        return [Finding(kind, 0.0, (), u(1.2, 1.45))]
    side = 1 if rng.random() < 0.6 else -1      # devices favour the patient's left (image right)
    if kind == "tube":        # endotracheal tube to above the carina, or nasogastric to the stomach
        x0 = 512 + rng.normal(0, 10)
        if rng.random() < 0.5:
            tip = (x0 + rng.normal(0, 10), u(300, 400))
            return [Finding(kind, u(55, 90), _curve((x0, -20), (x0 + rng.normal(0, 15), 150), tip),
                            u(10, 14))]
        tip = (u(570, 660), u(830, 940))
        return [Finding(kind, u(50, 85), _curve((x0, -20), (500 + rng.normal(0, 15), 520), tip), u(6, 9))]
    if kind == "line":        # central venous catheter: along the clavicle, down into the SVC
        start = (512 + side * u(330, 420), u(180, 260))
        tip = (512 + side * 20 + rng.normal(0, 10), u(380, 480))
        return [Finding(kind, u(60, 100), _curve(start, (512 + side * u(60, 120), u(240, 300)), tip),
                        u(5, 8))]
    if kind == "ecg":         # 2-4 electrodes, each with a wire running off the film
        out = []
        for _ in range(int(rng.integers(2, 5))):
            s = 1 if rng.random() < 0.5 else -1
            c = (512 + s * u(120, 400), u(120, 800))
            end = (512 + s * 540, c[1] + u(-250, 100))
            mid = ((c[0] + end[0]) / 2 + rng.normal(0, 40), (c[1] + end[1]) / 2 + rng.normal(0, 60))
            out.append(Finding(kind, u(110, 170), _curve(c, mid, end), u(14, 22)))
        return out
    if kind == "pacemaker":   # generator below the clavicle, lead through the SVC into the ventricle
        centre = (512 + side * u(200, 300), u(150, 240))
        lead = _curve(centre, (512 + side * 40, u(300, 360)), (u(560, 620), u(660, 740)))
        return [Finding(kind, u(150, 210), lead, u(40, 55))]
    raise ValueError(f"unknown finding kind {kind!r}")


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
    """The film of ``case`` as uint8 (size, size); boxes map to pixels by size/1024.

    The findings draw nothing from ``rng``, so the same case without findings (same ``rng``
    state) renders the identical film outside the findings.
    """
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (FRAME / size)
    xx, yy = np.meshgrid(coords, coords)
    img = np.full((size, size), rng.uniform(15, 35), dtype=np.float32)
    body = _ellipse(xx, yy, 512, 600, rng.uniform(420, 470), 620, 0.08)
    img += body * rng.uniform(120, 145)
    heart_size = 1.15 if case.view == "AP" else 1.0      # AP films magnify the heart
    heart_size *= float(np.prod([f.size for f in case.findings if f.kind == "cardiomegaly"]))
    heart = _ellipse(xx, yy, 550, 720, 140 * heart_size, 120 * heart_size, 0.3)
    lungs = sum(_ellipse(xx, yy, l.cx, l.cy, l.ax, l.ay, 0.15) for l in case.lungs) * (1 - heart)
    img -= lungs * body * rng.uniform(70, 90)
    img += _ellipse(xx, yy, 512, 600, 38, 600, 0.5) * 25                      # spine
    period = rng.uniform(60, 80)
    ribs = np.sin(2 * np.pi * (yy + 0.0009 * (xx - 512) ** 2) / period)
    img += np.maximum(ribs, 0) * body * (0.3 + 0.7 * lungs) * rng.uniform(10, 16)
    for (x, y, w, h), peak in zip(case.boxes, case.contrast):
        r2 = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2
        profile = np.clip(1 - r2, 0, 1) ** 0.7         # 0 outside the box's inscribed ellipse
        texture = 0.7 + 0.3 * np.tanh(_smooth_noise(rng, size, 12))
        img += profile * texture * (0.15 + 0.85 * np.minimum(lungs, 1)) * peak
    _add_findings(img, case, xx, yy, lungs)
    img += _smooth_noise(rng, size, 6) * 8 + rng.normal(0, 4, size=(size, size)).astype(np.float32)
    gain, gamma = rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.1)
    img = 255 * (np.clip(img * gain, 0, 255) / 255) ** gamma
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _add_findings(img: np.ndarray, case: Case, xx: np.ndarray, yy: np.ndarray,
                  lungs: np.ndarray) -> None:
    """Add the nodules, effusions and devices of ``case`` to ``img`` (gray levels, in place);
    ``lungs`` is the rendered lung-field mask (fluid takes away the lung's lucency)."""
    for f in case.findings:
        if f.kind == "nodule":         # a dome with a sharp rim
            (cx, cy), = f.points
            img += f.strength * _ellipse(xx, yy, cx, cy, f.size, f.size, 0.25) ** 0.5
        elif f.kind == "effusion":     # fluid fills the lung base up to a meniscus
            (cx, level), = f.points
            lung = min(case.lungs, key=lambda l: abs(l.cx - cx))
            side = np.sign(lung.cx - 512)
            lateral = np.clip((xx - lung.cx) / lung.ax * side, 0, 1)
            fluid = np.clip((yy - level + f.size * lateral ** 2) / 40 + 0.5, 0, 1)
            img += f.strength * fluid * lungs * (np.sign(xx - 512) == side)
    devices = [f for f in case.findings if f.kind in DEVICES]
    if devices:
        img += _device_layer(devices, img.shape[0])


def _device_layer(devices: list[Finding], size: int) -> np.ndarray:
    """Tubes, lines, ECG leads and pacemakers as gray levels (size, size): drawn on a 2x canvas
    (later objects cover earlier ones), then area-averaged down, which anti-aliases thin wires."""
    scale = 2 * size / FRAME
    canvas = Image.new("L", (2 * size, 2 * size))
    draw = ImageDraw.Draw(canvas)
    for f in devices:
        pts = [(x * scale, y * scale) for x, y in f.points]
        fill, r = int(min(f.strength, 255)), f.size * scale
        if f.kind in ("tube", "line"):
            draw.line(pts, fill=fill, width=max(1, round(r)), joint="curve")
            continue
        draw.line(pts, fill=int(0.6 * fill), width=max(1, round(6 * scale)), joint="curve")
        (cx, cy) = pts[0]
        if f.kind == "ecg":            # ring electrode with a central snap
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, round(r / 4)))
            draw.ellipse((cx - r / 3, cy - r / 3, cx + r / 3, cy + r / 3), fill=fill)
        else:                          # pacemaker generator: a rounded metal can
            draw.rounded_rectangle((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), radius=0.4 * r, fill=fill)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32)


def _label_rows(case: Case) -> list[str]:
    """Kaggle label rows: ``pid,264.0,152.0,213.0,379.0,1`` per box, or ``pid,,,,,0``."""
    if not len(case.boxes):
        return [f"{case.patient_id},,,,,0"]
    return [f"{case.patient_id},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1" for x, y, w, h in case.boxes]


TRUE_BOXES = "demo_true_boxes.csv"   # the rsna difficulty's hidden true opacity boxes
_OUTPUTS = (paths.TRAIN_IMAGES, paths.TEST_IMAGES, paths.TRAIN_LABELS, paths.CLASS_INFO,
            paths.SAMPLE_SUBMISSION, paths.DEMO_TEST_LABELS, TRUE_BOXES)
EASY_DEFAULTS = {"n_train": 400, "n_test": 100, "size": 256}
DIFFICULTIES = ("easy", "rsna")


def prepare_out(out: Path, n_train: int, n_test: int, size: int, force: bool) -> Path:
    """Check the arguments and make ``out`` ready: refuses a non-empty folder unless ``force``
    (then only the data set's own files are removed)."""
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
    return out


def write_images(out: Path, splits: dict, size: int, render_film) -> None:
    """The DICOM of every case: ``splits`` maps an image folder to (rngs, cases); a case's film is
    ``render_film(case, size, rng)``."""
    with tqdm(total=sum(len(cases) for _, cases in splits.values()), desc="demo-data", unit="img") as bar:
        for split, (rngs, cases) in splits.items():
            (out / split).mkdir(parents=True, exist_ok=True)
            for rng, case in zip(rngs, cases):
                dicom.write_dicom(out / split / f"{case.patient_id}.dcm", render_film(case, size, rng),
                                  case.patient_id, case.age, case.sex, case.view)
                bar.update()


def write_csvs(out: Path, train: list, test: list) -> None:
    """The Kaggle CSVs and demo_test_labels.csv of cases with ``patient_id``, ``boxes``, ``cls``;
    the train labels come last: their presence marks a finished set."""
    header = "patientId,x,y,width,height,Target\n"
    write_text(out / paths.DEMO_TEST_LABELS,
               header + "".join(r + "\n" for c in test for r in _label_rows(c)))
    write_text(out / paths.SAMPLE_SUBMISSION, "patientId,PredictionString\n"
               + "".join(f"{c.patient_id},0.5 0 0 100 100\n" for c in test))
    write_text(out / paths.CLASS_INFO, "patientId,class\n" + "".join(
        f"{c.patient_id},{c.cls}\n" for c in train for _ in _label_rows(c)))
    write_text(out / paths.TRAIN_LABELS,
               header + "".join(r + "\n" for c in train for r in _label_rows(c)))


def make_dataset(out: Path, n_train: int = 400, n_test: int = 100, size: int = 256, seed: int = 0,
                 force: bool = False) -> None:
    """Write the synthetic data set into ``out`` in Kaggle's layout (see the module docstring).

    Refuses a non-empty ``out`` unless ``force`` (then only the data set's own files are replaced).
    """
    out = prepare_out(out, n_train, n_test, size, force)
    master = np.random.default_rng([seed, 0])
    splits = {}
    for index, (split, n) in enumerate(((paths.TRAIN_IMAGES, n_train), (paths.TEST_IMAGES, n_test))):
        positive = np.zeros(n, dtype=bool)
        positive[master.permutation(n)[:round(POSITIVE_FRACTION * n)]] = True
        rngs = [np.random.default_rng([seed, index + 1, i]) for i in range(n)]
        splits[split] = (rngs, [sample_case(rng, bool(p)) for rng, p in zip(rngs, positive)])
    write_images(out, splits, size, render)
    write_csvs(out, splits[paths.TRAIN_IMAGES][1], splits[paths.TEST_IMAGES][1])
