"""``demo-data --difficulty rsna``: embedded films a reader finds hard, labelled by simulated readers.

The same Kaggle layout as kit.data.demo (plus the hidden ``demo_true_boxes.csv``), with:

* the real label statistics (kit.data.demo_stats): 22.5 % of the images positive, 1/2/3/4 boxes on
  43/54/2/0.2 % of those, the real class split, and box widths, heights and centres drawn from
  the real quantiles (allocations are exact per split, up to rounding);
* films: a patient with per-film pose (shift, scale, rotation), lungs cut by diaphragm domes,
  heart, mediastinum, spine, clavicles, two families of ribs and branching vessel markings from
  the hila; opacities are diffuse, with soft irregular margins and a patchy texture at the scale
  of the vessels, their peak contrast spread so that about one in ten sits near the noise (the
  others clear of it and of the vessel markings: a from-scratch detector at 128 px can learn them
  in the demo's budget), and they are drawn where they fall, over the heart or below a dome too
  (a little weaker there); per-film exposure,
  heel gradient and noise, collimation borders and burned-in markers; "Not Normal" findings as in
  kit.data.demo;
* readers, not rulers: each label box is a reader's box around the true opacity (every edge
  jittered, slightly generous on average); a label sometimes covers two adjacent opacities
  (``MERGE_P``), and faint opacities are sometimes not labelled at all, beside a labelled one or
  on a film labelled negative. The box statistics are those of the labels; the truth is drawn
  around them (the joint law of truth and label is what a reader model defines, either way).

``demo_true_boxes.csv`` has the label file's columns plus split (train/test), contrast (peak gray
levels) and labelled (0: no reader boxed it), one row per true opacity or ``pid,,,,,0`` per film
without one. The competition mAP of the true boxes against the labels (the "ceiling") is 0.53
on 20,000 images, 0.50-0.58 on 300-image test splits (bench/demo_rsna.py). Everything derives
from ``seed``: the same arguments give the same bytes.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from kit import paths
from kit.data import demo, demo_stats
from kit.data.demo import Finding, Lung, _ellipse, _smooth_noise
from kit.io import write_text

DEFAULTS = {"n_train": 2000, "n_test": 300, "size": 256}
TRUE_BOXES = demo.TRUE_BOXES
SEED_TAG = 19                   # keeps these films' random streams apart from the easy set's
READER_MARGIN = 0.04            # a reader's edge lies this much (of the side) outside the opacity's
READER_EDGE_SD = 0.10           # and scatters this much (sd, of the side) around that
MERGE_P = 0.12                  # a label box drawn around two adjacent opacities
EXTRA_MISSED_P = 0.12           # positive films with one more, faint opacity nobody boxed
ONLY_MISSED_P = 0.06            # negative-labelled films with a faint opacity nobody boxed
NEAR_NOISE_FRACTION = 0.10      # labelled opacities whose peak is near the noise:
NEAR_NOISE_PEAK = (6.0, 14.0)   # uniform in gray levels (before exposure)
PEAK = (65.0, 160.0)            # the others: log-uniform peak in gray levels (before exposure)
MISSED_PEAK = (5.0, 11.0)
POSITIVE_FINDING_FRACTION = demo.POSITIVE_FINDING_FRACTION
MARKER_TEXT = ("PORTABLE", "AP", "SUPINE", "ERECT", "SEMI-ERECT", "AP PORTABLE")


@dataclass(frozen=True)
class Film:
    """One synthetic patient. ``boxes``: the reader's label boxes (k, 4) x, y, w, h (1024 px);
    ``truth``: the true opacity boxes (m, 4) with their ``contrast`` (peak gray levels) and
    ``labelled`` (a reader boxed it); ``pose``: dx, dy, scale, angle (rad) of the patient in the
    frame; ``lungs``: the lung fields in the patient's own frame."""
    patient_id: str
    age: int
    sex: str
    view: str
    cls: str
    boxes: np.ndarray
    truth: np.ndarray
    contrast: tuple[float, ...]
    labelled: tuple[bool, ...]
    findings: tuple[Finding, ...]
    pose: tuple[float, float, float, float]
    lungs: tuple[Lung, Lung]


def _to_frame(pose, u, v):
    """Patient-frame points (u, v) -> film-frame (x, y): scale and rotate about the centre, shift."""
    dx, dy, s, a = pose
    u, v = np.asarray(u) - 512, np.asarray(v) - 512
    return (512 + dx + s * (np.cos(a) * u - np.sin(a) * v), 512 + dy + s * (np.sin(a) * u + np.cos(a) * v))


def _to_patient(pose, x, y):
    dx, dy, s, a = pose
    x, y = (x - 512 - dx) / s, (y - 512 - dy) / s
    return 512 + np.cos(a) * x + np.sin(a) * y, 512 - np.sin(a) * x + np.cos(a) * y


def frame_lungs(film: Film) -> tuple[Lung, Lung]:
    """The lung fields in the film frame (for placing findings)."""
    s = film.pose[2]
    return tuple(Lung(*map(float, _to_frame(film.pose, l.cx, l.cy)), l.ax * s, l.ay * s) for l in film.lungs)


def _jitter(rng: np.random.Generator, box, scale: float = 1.0) -> list[float]:
    """The opacity a reader's ``box`` was drawn around: each edge moved in by the margin + scatter."""
    x, y, w, h = box
    e = np.clip(READER_MARGIN + READER_EDGE_SD * scale * rng.standard_normal(4), -0.25, 0.3)
    x1, y1 = max(0, round(x + e[0] * w)), max(0, round(y + e[1] * h))
    x2, y2 = min(demo.FRAME, round(x + w - e[2] * w)), min(demo.FRAME, round(y + h - e[3] * h))
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def true_opacities(rng: np.random.Generator, labels: np.ndarray, missed: bool):
    """(truth (m, 4), contrast, labelled) behind a film's reader boxes ``labels``; ``missed`` adds
    one faint opacity no reader boxed."""
    truth, contrast, labelled = [], [], []
    for x, y, w, h in labels:
        if rng.random() < MERGE_P and max(w, h) >= 160:      # two adjacent opacities, one box
            vertical = h >= w
            start, extent, other = (y, h, w) if vertical else (x, w, h)
            f, gap = rng.uniform(0.4, 0.6), rng.uniform(-0.1, 0.1) * extent
            first, second = f * extent - gap / 2, (1 - f) * extent - gap / 2
            for s0, e0 in ((start, first), (start + extent - second, second)):
                shrink = rng.uniform(0.7, 1.0)
                o0 = (x if vertical else y) + rng.uniform(0, 1 - shrink) * other
                part = [o0, s0, shrink * other, e0] if vertical else [s0, o0, e0, shrink * other]
                truth.append(_jitter(rng, part, 0.5))
        else:
            truth.append(_jitter(rng, (x, y, w, h)))
        while len(contrast) < len(truth):
            near = rng.random() < NEAR_NOISE_FRACTION
            peak = rng.uniform(*NEAR_NOISE_PEAK) if near else np.exp(rng.uniform(*np.log(PEAK)))
            contrast.append(float(peak))
            labelled.append(True)
    if missed:
        for _ in range(20):
            box = demo_stats.sample_boxes(rng, 1)[0]           # a smaller one, same centre
            small = np.round(box[2:] * rng.uniform(0.6, 0.9))
            box = np.r_[box[:2] + np.floor((box[2:] - small) / 2), small]
            if not demo_stats.overlaps(box, [np.array(t) for t in truth]):
                truth.append([float(v) for v in box])
                contrast.append(float(rng.uniform(*MISSED_PEAK)))
                labelled.append(False)
                break
    return np.array(truth, dtype=float).reshape(-1, 4), tuple(contrast), tuple(labelled)


def sample_film(rng: np.random.Generator, n_boxes: int, cls: str) -> Film:
    """A patient whose readers drew ``n_boxes`` boxes (0: negative, of class ``cls``)."""
    pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < (0.7 if n_boxes else 0.4) else "PA"
    sex = "M" if rng.random() < 0.55 else "F"
    age = int(np.clip(round(rng.normal(47, 16)), 2, 92))
    pose = (float(rng.normal(0, 18)), float(rng.normal(0, 22)), float(rng.uniform(0.93, 1.07)),
            float(np.clip(rng.normal(0, np.radians(2.5)), -0.1, 0.1)))
    lungs = tuple(Lung(512 + side * rng.uniform(190, 210), rng.uniform(500, 530), rng.uniform(175, 195),
                       rng.uniform(355, 395)) for side in (-1, 1))
    labels = demo_stats.sample_boxes(rng, n_boxes) if n_boxes else np.zeros((0, 4))
    missed = rng.random() < (EXTRA_MISSED_P if n_boxes else ONLY_MISSED_P)
    truth, contrast, labelled = true_opacities(rng, labels, missed)
    film = Film(pid, age, sex, view, cls, labels, truth, contrast, labelled, (), pose, lungs)
    if n_boxes:
        kinds = int(rng.random() < POSITIVE_FINDING_FRACTION)
    else:
        kinds = 0 if cls == "Normal" else int(rng.choice(list(demo.FINDING_COUNT_P),
                                                          p=list(demo.FINDING_COUNT_P.values())))
    findings = demo._sample_findings(rng, frame_lungs(film), kinds)
    return Film(pid, age, sex, view, cls, labels, truth, contrast, labelled, findings, pose, lungs)


def fields(film: Film, uu: np.ndarray, vv: np.ndarray) -> dict[str, np.ndarray]:
    """Soft masks in [0, 1] on patient-frame grids: body, lungs (aerated lung: heart, mediastinum
    and everything below the domes removed), heart and below (under the diaphragm domes)."""
    body = np.maximum(_ellipse(uu, vv, 512, 640, 520, 720, 0.05), _ellipse(uu, vv, 512, 0, 150, 300, 0.1))
    scale = (1.12 if film.view == "AP" else 1.0) * float(np.prod(
        [f.size for f in film.findings if f.kind == "cardiomegaly"]))
    heart = _ellipse(uu, vv, 560, 710, 145 * scale, 118 * scale, 0.25)
    mediastinum = _ellipse(uu, vv, 512, 330, 62, 260, 0.4)
    below = np.zeros_like(uu)
    lungs = np.zeros_like(uu)
    for i, l in enumerate(film.lungs):
        top = l.cy + (0.68 if i == 0 else 0.74) * l.ay          # the right hemidiaphragm sits higher
        dome = top + 110 * ((uu - l.cx) / l.ax) ** 2
        under = np.clip((vv - dome) / 24 + 0.5, 0, 1) * (np.abs(uu - l.cx) < 1.3 * l.ax)
        below = np.maximum(below, under)
        lungs += _ellipse(uu, vv, l.cx, l.cy, l.ax, l.ay, 0.1) * (1 - under)
    lungs = np.clip(lungs, 0, 1) * (1 - heart) * (1 - mediastinum)
    return {"body": body, "lungs": lungs, "heart": heart, "below": below}


def _vessels(rng: np.random.Generator, film: Film, size: int) -> np.ndarray:
    """Branching vessel markings from both hila, in [0, 1] (size, size), blurred."""
    scale = 2 * size / demo.FRAME
    canvas = Image.new("L", (2 * size, 2 * size))
    draw = ImageDraw.Draw(canvas)
    s = film.pose[2]

    def branch(u, v, angle, length, width, depth):
        u2, v2 = u + length * np.cos(angle), v + length * np.sin(angle)
        (x1, x2), (y1, y2) = _to_frame(film.pose, [u, u2], [v, v2])
        draw.line([(x1 * scale, y1 * scale), (x2 * scale, y2 * scale)], fill=int(90 + 16 * width),
                  width=max(1, round(width * s * scale)))
        if depth:
            for turn in (-1, 1):
                branch(u2, v2, angle + turn * rng.uniform(0.25, 0.6), length * rng.uniform(0.6, 0.85),
                       width * 0.68, depth - 1)

    for side, lung in zip((-1, 1), film.lungs):
        hilum = (512 + side * 95, lung.cy - 40 + rng.normal(0, 10))
        for _ in range(int(rng.integers(4, 7))):
            angle = (np.pi if side < 0 else 0.0) - side * rng.uniform(-1.3, 1.3)
            branch(*hilum, angle, rng.uniform(70, 110), rng.uniform(7, 10), 4)
    small = canvas.resize((size, size), Image.BOX).filter(ImageFilter.GaussianBlur(max(0.5, size / 512)))
    return np.asarray(small, dtype=np.float32) / 255


def _opacity(rng: np.random.Generator, box, peak: float, xx, yy, size: int) -> np.ndarray:
    """A diffuse opacity inside ``box``: soft, irregular (lobulated) margin, patchy texture at the
    scale of the vessel markings; gray levels before exposure."""
    x, y, w, h = box
    r = np.sqrt(((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2)
    margin = np.minimum(0.92 + 0.12 * np.tanh(_smooth_noise(rng, size, 12)), 1)
    env = np.clip((margin - r) / 0.35, 0, 1)
    env = env * env * (3 - 2 * env)
    texture = 0.85 + 0.12 * _smooth_noise(rng, size, 32) + 0.06 * _smooth_noise(rng, size, 64)
    texture = np.clip(texture, 0.2, 1.3)
    return peak * env * texture


def _markers(rng: np.random.Generator, size: int) -> np.ndarray:
    """Burned-in markers (a side letter in a box, sometimes a text line) as gray levels, 0 elsewhere."""
    scale = 2 * size / demo.FRAME
    canvas = Image.new("L", (2 * size, 2 * size))
    draw = ImageDraw.Draw(canvas)
    fill = int(rng.uniform(215, 255))
    if rng.random() < 0.85:
        side = "L" if rng.random() < 0.7 else "R"
        px = rng.uniform(60, 200) if rng.random() < 0.5 else rng.uniform(830, 960)
        py = rng.uniform(50, 220)
        r = rng.uniform(22, 36)
        font = ImageFont.load_default(size=max(4, round(1.5 * r * scale)))
        draw.rectangle([(px - r) * scale, (py - r) * scale, (px + r) * scale, (py + r) * scale],
                       outline=fill, width=max(1, round(4 * scale)))
        centred = {"anchor": "mm"} if isinstance(font, ImageFont.FreeTypeFont) else {}
        draw.text((px * scale, py * scale), side, fill=fill, font=font, **centred)
    if rng.random() < 0.4:
        text = str(rng.choice(MARKER_TEXT))
        font = ImageFont.load_default(size=max(4, round(rng.uniform(26, 40) * scale)))
        draw.text((rng.uniform(30, 500) * scale, rng.uniform(15, 60) * scale), text, fill=fill, font=font)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32)


def _collimate(rng: np.random.Generator, img: np.ndarray, xx, yy) -> np.ndarray:
    """Collimation borders on some sides: a bright (or black) band with a slightly tilted edge."""
    for side in range(4):
        if rng.random() >= 0.3:
            continue
        width, tilt = rng.uniform(15, 70), rng.uniform(-0.03, 0.03)
        fill = rng.uniform(190, 245) if rng.random() < 0.7 else rng.uniform(0, 25)
        along, across = (yy, xx) if side < 2 else (xx, yy)
        depth = across if side % 2 == 0 else demo.FRAME - across
        m = np.clip((width + tilt * (along - 512) - depth) / 4 + 0.5, 0, 1)
        img = img * (1 - m) + fill * m
    return img


def render(film: Film, size: int, rng: np.random.Generator) -> np.ndarray:
    """The film of ``film`` as uint8 (size, size); boxes map to pixels by size/1024."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (demo.FRAME / size)
    xx, yy = np.meshgrid(coords, coords)
    uu, vv = (a.astype(np.float32) for a in _to_patient(film.pose, xx, yy))
    f = fields(film, uu, vv)
    body, lungs = f["body"], f["lungs"]
    img = np.full((size, size), rng.uniform(10, 35), dtype=np.float32)
    img += body * rng.uniform(115, 145) + f["below"] * body * rng.uniform(5, 15)
    img -= lungs * body * rng.uniform(65, 90)
    img += f["heart"] * rng.uniform(5, 15)
    img += _ellipse(uu, vv, 512, 620, 36, 650, 0.5) * (22 + 3 * np.sin(2 * np.pi * vv / 58))   # spine
    cage = _ellipse(uu, vv, 512, 520, 430, 420, 0.1) * body
    period = rng.uniform(58, 72) * (1 + 0.25 * np.clip((vv - 200) / 600, 0, 1))  # wider apart below
    wobble = 0.12 * _smooth_noise(rng, size, 5)
    posterior = np.maximum(np.sin(2 * np.pi * ((vv + 0.0009 * (uu - 512) ** 2) / period + wobble)), 0) ** 0.6
    anterior = np.maximum(np.sin(2 * np.pi * (vv + 0.35 * np.abs(uu - 512)) / (1.3 * period)), 0)
    lateral = np.clip(np.abs(uu - 512) / 250, 0.3, 1)                             # ribs fade medially
    ribs = rng.uniform(7, 13) * posterior + rng.uniform(3, 7) * anterior
    img += cage * lateral * (0.35 + 0.65 * lungs) * ribs
    if film.sex == "F" and rng.random() < 0.8:                                   # breast shadows
        for l in film.lungs:
            img += _ellipse(uu, vv, l.cx + 0.25 * (l.cx - 512), l.cy + 0.75 * l.ay, 1.1 * l.ax, 0.4 * l.ay,
                            0.6) * rng.uniform(8, 18)
    for side in (-1, 1):                                                           # clavicles
        t = np.clip(((uu - 512) * side - 50) / 280, 0, 1)
        along = np.abs((uu - 512) * side - 200) < 160
        img += np.clip(1 - np.abs(vv - (250 - 65 * t)) / 16, 0, 1) * along * 24
    img += _vessels(rng, film, size) * (0.25 + lungs) * rng.uniform(8, 14)
    if rng.random() < 0.5:                                                         # gastric bubble
        l = film.lungs[1]
        img -= _ellipse(uu, vv, l.cx - 20, l.cy + 0.74 * l.ay + 60, 55, 30, 0.3) * rng.uniform(15, 30)
    for box, peak in zip(film.truth, film.contrast):
        img += _opacity(rng, box, peak, xx, yy, size) * (0.85 + 0.15 * np.minimum(lungs, 1))
    demo._add_findings(img, SimpleNamespace(findings=film.findings, lungs=frame_lungs(film)), xx, yy, lungs)
    img += _smooth_noise(rng, size, 6) * 6
    img += rng.normal(0, rng.uniform(1.5, 4), size=(size, size)).astype(np.float32)
    img *= 1 + rng.uniform(-0.1, 0.1) * (yy - 512) / 512                          # heel effect
    gain, gamma, offset = rng.uniform(0.8, 1.15), rng.uniform(0.75, 1.3), rng.uniform(-10, 10)
    img = 255 * (np.clip(img * gain + offset, 0, 255) / 255) ** gamma
    img = _collimate(rng, img, xx, yy)
    img = np.maximum(img, _markers(rng, size))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def sample_split(seed: int, index: int, n: int) -> tuple[list, list[Film]]:
    """(rngs, films) of one split: exactly round(22.5 %) positive, box counts and negative classes
    allocated by their real shares; film i draws from its own stream."""
    master = np.random.default_rng([seed, SEED_TAG, index])
    n_pos = round(demo_stats.POSITIVE_FRACTION * n)
    counts = np.zeros(n, dtype=int)
    order = master.permutation(n)
    counts[order[:n_pos]] = demo_stats.allocate(master, n_pos, list(demo_stats.BOX_COUNT_P.values())) + 1
    names = list(demo_stats.NEGATIVE_CLASSES)
    negative = demo_stats.allocate(master, n - n_pos, list(demo_stats.NEGATIVE_CLASSES.values()))
    classes = np.full(n, "Lung Opacity", dtype=object)
    classes[order[n_pos:]] = [names[i] for i in negative]
    rngs = [np.random.default_rng([seed, SEED_TAG, index, i]) for i in range(n)]
    return rngs, [sample_film(rng, int(k), str(c)) for rng, k, c in zip(rngs, counts, classes)]


def _truth_rows(film: Film, split: str) -> list[str]:
    if not len(film.truth):
        return [f"{film.patient_id},,,,,0,{split},,"]
    return [f"{film.patient_id},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1,{split},{c:.1f},{int(lab)}"
            for (x, y, w, h), c, lab in zip(film.truth, film.contrast, film.labelled)]


def make_dataset(out: Path, n_train: int = DEFAULTS["n_train"], n_test: int = DEFAULTS["n_test"],
                 size: int = DEFAULTS["size"], seed: int = 0, force: bool = False) -> None:
    """Write the rsna-difficulty data set into ``out`` (see the module docstring); refuses a
    non-empty ``out`` unless ``force`` (then only the data set's own files are replaced)."""
    out = demo.prepare_out(out, n_train, n_test, size, force)
    sizes = ((paths.TRAIN_IMAGES, n_train), (paths.TEST_IMAGES, n_test))
    splits = {split: sample_split(seed, index, n) for index, (split, n) in enumerate(sizes)}
    demo.write_images(out, splits, size, render)
    train, test = splits[paths.TRAIN_IMAGES][1], splits[paths.TEST_IMAGES][1]
    rows = [r for name, films in (("train", train), ("test", test))
            for f in films for r in _truth_rows(f, name)]
    write_text(out / TRUE_BOXES, "patientId,x,y,width,height,Target,split,contrast,labelled\n"
               + "".join(r + "\n" for r in rows))
    demo.write_csvs(out, train, test)
