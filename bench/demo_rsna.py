"""Measure the rsna-difficulty demo data (``python -m kit demo-data --difficulty rsna``); prints JSON.

Writes the set (default arguments of kit.data.demo_rsna) to a temp folder (or --out) on one core
and reports, from the files written:
  seconds, ms_per_image:   generation time (sampling, rendering, DICOM + CSV writing);
  labels:                  positive rate, boxes per positive image, class shares, left-half share;
  ks / ks_model:           two-sample KS statistic of box width, height, centre x and centre y of
                           the written labels (train + test) / of 20,000 sampled images' labels
                           against the real stage_2_train_labels.csv (--real; skipped if absent);
  ceiling_test:            competition mAP of the true boxes (score 1) against the labels on the
                           test split (kit.score.metric.score_dataset);
  truth:                   the reader model's traces: share of true opacities nobody labelled,
                           near-noise share, opacities over the heart or below a dome.
--sheet PATH draws 12 films (read back from the DICOMs) with label (green) and true (red; orange:
unlabelled) boxes. --fit prints the constants of kit/data/demo_stats.py refitted from --real.
Usage: python bench/demo_rsna.py [--n-train N] [--n-test N] [--size PX] [--seed S] [--out DIR]
                                 [--real ../shared/rsna] [--sheet /tmp/demo_rsna_films.png] [--fit]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit import paths  # noqa: E402
from kit.data import demo_rsna, demo_stats, labels  # noqa: E402
from kit.score.metric import score_dataset  # noqa: E402

FIELDS = ("width", "height", "centre_x", "centre_y")


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a)
                        - np.searchsorted(b, grid, "right") / len(b)).max())


def box_columns(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x, y, w, h -> (n, 4) width, height, centre x, centre y."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return np.c_[boxes[:, 2], boxes[:, 3], boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2]


def real_boxes(real: Path) -> np.ndarray:
    df = labels.read_labels(real / paths.TRAIN_LABELS)
    return box_columns(df[df["Target"] == 1][labels.BOX_FIELDS].to_numpy())


def ks_table(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    return {name: round(ks(generated[:, i], real[:, i]), 4) for i, name in enumerate(FIELDS)}


def model_boxes(n_images: int = 20000, seed: int = 0) -> np.ndarray:
    """Label boxes of ``n_images`` sampled images (boxes only, no films), as box_columns."""
    rng = np.random.default_rng(seed)
    n_pos = round(demo_stats.POSITIVE_FRACTION * n_images)
    counts = demo_stats.allocate(rng, n_pos, list(demo_stats.BOX_COUNT_P.values())) + 1
    return box_columns(np.concatenate([demo_stats.sample_boxes(rng, int(k)) for k in counts]))


def label_summary(out: Path) -> dict:
    """Positive rate, boxes per positive image, classes and left-half share of the written labels."""
    train = labels.read_labels(out / paths.TRAIN_LABELS)
    test = labels.read_labels(out / paths.DEMO_TEST_LABELS)
    classes = labels.read_class_info(out / paths.CLASS_INFO).drop_duplicates()
    both = pd.concat([train, test])
    per_image = both.groupby("patientId", sort=False)["Target"].sum()
    positive = per_image[per_image > 0]
    boxes = box_columns(both[both["Target"] == 1][labels.BOX_FIELDS].to_numpy())
    return {"images": int(len(per_image)), "positive_rate": round(float((per_image > 0).mean()), 4),
            "boxes_per_positive_image": {str(k): round(float((positive == k).mean()), 4)
                                         for k in (1, 2, 3, 4)},
            "classes_train": {k: round(float(v), 4)
                              for k, v in classes["class"].value_counts(normalize=True).items()},
            "left_half": round(float((boxes[:, 2] < 512).mean()), 4), "boxes": int(len(boxes))}


def truth_table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / demo_rsna.TRUE_BOXES, dtype={"patientId": str})


def ceiling(out: Path) -> tuple[float, int]:
    """(mAP of the true test boxes at score 1 against the test labels, images scored)."""
    gt = labels.boxes_by_patient(labels.read_labels(out / paths.DEMO_TEST_LABELS))
    truth = labels.boxes_by_patient(labels.read_labels(out / demo_rsna.TRUE_BOXES))
    preds = {pid: (np.ones(len(truth[pid])), truth[pid]) for pid in gt if len(truth[pid])}
    score = score_dataset(gt, preds)
    return score.map, score.n_images - score.n_excluded


def truth_summary(out: Path, seed: int, n_test: int) -> dict:
    """The reader model's traces in demo_true_boxes.csv, and where the true opacities lie."""
    table = truth_table(out)
    boxes = table[table["Target"] == 1]
    # where the opacities lie: re-sample the test films (same seed) and look at their fields
    _, films = demo_rsna.sample_split(seed, 1, n_test)
    over_heart = below_dome = n = 0
    grid = 64
    coords = (np.arange(grid) + 0.5) * 1024 / grid
    xx, yy = np.meshgrid(coords, coords)
    for film in films:
        f = demo_rsna.fields(film, *demo_rsna._to_patient(film.pose, xx, yy))
        for x, y, w, h in film.truth:
            inside = (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
            n += 1
            over_heart += f["heart"][inside].mean() > 0.2 if inside.any() else 0
            below_dome += f["below"][inside].mean() > 0.2 if inside.any() else 0
    labelled = boxes[boxes["labelled"] == 1]
    return {"true_opacities": int(len(boxes)),
            "unlabelled_share": round(float((boxes["labelled"] == 0).mean()), 4),
            "near_noise_share_of_labelled": round(float(
                (labelled["contrast"] < demo_rsna.NEAR_NOISE_PEAK[1]).mean()), 4),
            "films_truth_positive_label_negative": int(
                len(set(boxes["patientId"]) - set(table[(table["labelled"] == 1)]["patientId"]))),
            "test_opacities_over_heart": round(over_heart / max(n, 1), 3),
            "test_opacities_below_dome": round(below_dome / max(n, 1), 3)}


def visibility(seed: int, n_test: int, size: int, n: int = 80) -> dict:
    """How visible the labelled test opacities are: each film rendered again without its
    opacities (same random stream); an opacity's signal is the mean gray level it adds in its core
    (inner half of its ellipse), the clutter is the sd of the aerated lung without opacities
    (noise, ribs, vessels). Shares of opacities with signal/clutter below 0.5 and 1."""
    import copy
    import dataclasses
    rngs, films = demo_rsna.sample_split(seed, 1, n_test)
    coords = (np.arange(size) + 0.5) * 1024 / size
    xx, yy = np.meshgrid(coords, coords)
    ratios = []
    for rng, film in [(r, f) for r, f in zip(rngs, films) if any(f.labelled)][:n]:
        twin = copy.deepcopy(rng)
        clean = demo_rsna.render(dataclasses.replace(film, contrast=(0.0,) * len(film.truth)), size, twin)
        added = demo_rsna.render(film, size, rng).astype(float) - clean
        lungs = demo_rsna.fields(film, *demo_rsna._to_patient(film.pose, xx, yy))["lungs"] > 0.8
        clutter = clean[lungs].std()
        for (x, y, w, h), lab in zip(film.truth, film.labelled):
            core = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 < 0.25
            if lab and core.any():
                ratios.append(added[core].mean() / clutter)
    ratios = np.array(ratios)
    return {"opacities": int(len(ratios)), "signal_to_clutter_median": round(float(np.median(ratios)), 2),
            "share_below_0.5": round(float((ratios < 0.5).mean()), 3),
            "share_below_1": round(float((ratios < 1).mean()), 3)}


def contact_sheet(out: Path, path: Path, n: int = 12) -> None:
    """``n`` films read back from the DICOMs: 8 label-positive, 2 truth-only, 2 negative ones."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kit.data import dicom

    table = truth_table(out)
    train = labels.read_labels(out / paths.TRAIN_LABELS)
    label_boxes = labels.boxes_by_patient(train)
    classes = dict(labels.read_class_info(out / paths.CLASS_INFO).drop_duplicates().to_numpy())
    pos = [p for p, b in label_boxes.items() if len(b)]
    with_truth = set(table[table["Target"] == 1]["patientId"])
    truth_only = [p for p, b in label_boxes.items() if not len(b) and p in with_truth]
    neg = [p for p, b in label_boxes.items() if not len(b) and p not in truth_only]
    chosen = pos[:8] + truth_only[:2] + neg[: n - len(pos[:8]) - len(truth_only[:2])]
    fig, axes = plt.subplots(3, 4, figsize=(16, 12.6))
    for ax, pid in zip(axes.flat, chosen):
        img = dicom.read_pixels(out / paths.TRAIN_IMAGES / f"{pid}.dcm")
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, extent=(0, 1024, 1024, 0))
        for x, y, w, h in label_boxes[pid]:
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="lime", lw=1.5))
        rows = table[(table["patientId"] == pid) & (table["Target"] == 1)]
        for r in rows.itertuples():
            ax.add_patch(plt.Rectangle((r.x, r.y), r.width, r.height, fill=False, lw=1.5, ls="--",
                                       ec="red" if r.labelled else "orange"))
        peaks = ", ".join(f"{c:.0f}" for c in rows["contrast"])
        ax.set_title(f"{classes[pid]}" + (f" | peak {peaks}" if peaks else ""), fontsize=9)
        ax.set_axis_off()
    fig.suptitle("rsna demo: label (green), true opacity (red dashed; orange: no reader boxed it)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def fit(real: Path) -> dict:
    """The constants of kit/data/demo_stats.py from the real train labels."""
    from statistics import NormalDist
    df = labels.read_labels(real / paths.TRAIN_LABELS)
    b = df[df["Target"] == 1].copy()
    b[["w", "h", "cx", "cy"]] = box_columns(b[labels.BOX_FIELDS].to_numpy())
    b["n"] = b.groupby("patientId")["patientId"].transform("size")
    b["side"] = np.where(b["cx"] < 512, "L", "R")
    cols, z = ["w", "h", "cx", "cy"], ["zw", "zh", "zcx", "zcy"]
    inv = np.vectorize(NormalDist().inv_cdf)
    out = {"quantiles": {}, "corr": {}}
    b[z] = 0.0
    for side, s in b.groupby("side"):
        out["quantiles"][side] = [[int(round(v)) for v in np.quantile(s[c], demo_stats.PROBS)] for c in cols]
        b.loc[s.index, z] = np.stack([inv(s[c].rank().to_numpy() / (len(s) + 1)) for c in cols], 1)
    group = b["n"].clip(upper=3)
    shift = {k: b[group == k][z].mean().round(3).tolist() for k in (1, 2, 3)}
    out["count_shift"] = shift
    resid = b[z].to_numpy() - np.array([shift[k] for k in group])
    for side in ("L", "R"):
        out["corr"][side] = np.corrcoef(resid[(b["side"] == side).to_numpy()].T).round(2).tolist()
    both_sides = b.groupby("patientId")["side"].transform("nunique") == 2
    two = b[(b["n"] == 2) & both_sides].sort_values(["patientId", "cx"])
    r = resid[b.index.get_indexer(two.index)]
    out["shared"] = [round(float(np.corrcoef(r[0::2, i], r[1::2, i])[0, 1]), 2) for i in range(4)]
    out["single_left"] = round(float((b[b["n"] == 1]["side"] == "L").mean()), 3)
    sides = b[b["n"] == 2].groupby("patientId")["side"].nunique()
    out["two_same_side"] = round(float((sides == 1).mean()), 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in demo_rsna.DEFAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="keep the set here (default: a temp folder)")
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "rsna")
    p.add_argument("--sheet", type=Path, default=None)
    p.add_argument("--fit", action="store_true")
    args = p.parse_args(argv)
    has_real = (args.real / paths.TRAIN_LABELS).is_file()
    if args.fit:
        print(json.dumps(fit(args.real)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo"
        start = time.perf_counter()
        demo_rsna.make_dataset(out, args.n_train, args.n_test, args.size, args.seed, force=True)
        seconds = time.perf_counter() - start
        result = {"args": {k: getattr(args, k) for k in ("n_train", "n_test", "size", "seed")},
                  "seconds": round(seconds, 1),
                  "ms_per_image": round(1000 * seconds / (args.n_train + args.n_test), 1),
                  "labels": label_summary(out)}
        value, scored = ceiling(out)
        result["ceiling_test"] = {"map": round(value, 4), "images_scored": scored}
        result["truth"] = truth_summary(out, args.seed, args.n_test)
        result["visibility_test"] = visibility(args.seed, args.n_test, args.size)
        if has_real:
            real = real_boxes(args.real)
            generated = box_columns(np.concatenate([
                labels.read_labels(out / name).query("Target == 1")[labels.BOX_FIELDS].to_numpy()
                for name in (paths.TRAIN_LABELS, paths.DEMO_TEST_LABELS)]))
            result["ks"] = ks_table(generated, real)
            result["ks_model"] = ks_table(model_boxes(), real)
        if args.sheet:
            contact_sheet(out, args.sheet)
            result["sheet"] = str(args.sheet)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
