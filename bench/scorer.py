"""Scorer benchmark: vectorised metric and tuner vs plain per-image Python loops.

Ground truth: the first 3,000 images (seeded shuffle) of ../shared/rsna/stage_2_train_labels.csv
when present, else synthetic boxes with the same positive rate; 0..10 predictions per image
(jittered copies of true boxes plus clutter). Prints one JSON object; asserts identical scores.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # run as a script from anywhere

from kit.score import metric
from kit.score import tune
from kit.score.postprocess import PostProcess  # noqa: E402
from kit.runs import RAW_COLUMNS  # noqa: E402

REAL = ROOT.parent / "shared" / "rsna" / "stage_2_train_labels.csv"
THRESHOLDS = [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]


def ground_truth(n: int, rng: np.random.Generator) -> tuple[dict, str]:
    if REAL.is_file():
        from kit.data.labels import boxes_by_patient, read_labels

        gt = boxes_by_patient(read_labels(REAL))
        ids = rng.permutation(sorted(gt))[:n]
        return {pid: gt[pid] for pid in ids}, "real stage-2 labels"
    out = {}
    for i in range(n):
        k = rng.choice([0, 1, 2, 3], p=[0.77, 0.1, 0.12, 0.01])
        out[f"s{i:05d}"] = np.column_stack([rng.integers(0, 700, (k, 2)),
                                            rng.integers(40, 320, (k, 2))]).astype(float)
    return out, "synthetic"


def detections(gt: dict, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for pid, g in gt.items():
        n = int(rng.integers(0, 11))
        for j in range(n):
            if len(g) and j < 2 * len(g):
                box = g[j % len(g)] * [1, 1, 1.15, 1.15] + rng.normal(0, 12, 4)
            else:
                box = np.r_[rng.integers(0, 700, 2), rng.integers(40, 320, 2)].astype(float)
            box[2:] = np.maximum(box[2:], 5)
            box[:2] = np.clip(box[:2], 0, 1000)
            rows.append((pid, round(float(rng.uniform(0.05, 1.0)), 3), *box.round(1)))
    return pd.DataFrame(rows, columns=RAW_COLUMNS)


def _iou(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def plain_image(gt, scores, boxes):
    """The public reference kernel's loop (stable ranking), one image."""
    if len(gt) == 0 and len(boxes) == 0:
        return None
    ranked = [boxes[i] for i in np.argsort(scores, kind="stable")[::-1]]
    total = 0.0
    for t in THRESHOLDS:
        used, tp = set(), 0
        for g in gt:
            for j, b in enumerate(ranked):
                if j not in used and _iou(g, b) >= t:
                    used.add(j)
                    tp += 1
                    break
        total += tp / (len(ranked) + len(gt) - tp)
    return total / len(THRESHOLDS)


def plain_dataset(gt, preds) -> float:
    empty = (np.zeros(0), np.zeros((0, 4)))
    values = [plain_image(g, *preds.get(pid, empty)) for pid, g in gt.items()]
    return float(np.mean([v for v in values if v is not None]))


def best_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    gt, source = ground_truth(3000, rng)
    raw = detections(gt, rng)
    preds = PostProcess(0.0, 0.0, 1.0, 10).apply(raw)
    fast = metric.score_dataset(gt, preds).map
    slow = plain_dataset(gt, preds)
    assert abs(fast - slow) <= 1e-12, (fast, slow)
    t_fast = best_time(lambda: metric.score_dataset(gt, preds))
    t_slow = best_time(lambda: plain_dataset(gt, preds), repeat=1)

    val = dict(list(gt.items())[:1500])
    val_raw = raw[raw["patientId"].isin(set(val))]
    small = dict(thresholds=(0.2, 0.4, 0.6, 0.8), scales=(0.85, 1.0), max_boxes=(1, 3),
                 image_thresholds=(0.0, 0.5))
    result = tune.sweep(val_raw, val, **small)
    settings = [(idx, result.setting(idx)) for idx in np.ndindex(result.map.shape)]
    start = time.perf_counter()
    worst = 0.0
    for idx, post in settings:
        worst = max(worst, abs(plain_dataset(val, post.apply(val_raw)) - result.map[idx]))
    t_plain = time.perf_counter() - start
    assert worst <= 1e-12, worst
    plain_rate = len(settings) * len(val) / t_plain

    start = time.perf_counter()
    fine = tune.sweep(val_raw, val)
    t_fine = time.perf_counter() - start
    fine_rate = fine.map.size * len(val) / t_fine
    best, best_map = fine.best
    print(json.dumps({
        "ground_truth": source, "images": len(gt), "detections": len(raw),
        "score_dataset_s": round(t_fast, 4), "plain_loop_s": round(t_slow, 3),
        "score_speedup": round(t_slow / t_fast, 1), "map": round(fast, 6),
        "tune_images": len(val), "plain_settings_checked": len(settings),
        "plain_max_abs_diff": worst,
        "plain_setting_images_per_s": round(plain_rate), "fine_sweep_settings": fine.map.size,
        "fine_sweep_s": round(t_fine, 3), "tune_setting_images_per_s": round(fine_rate),
        "tune_speedup": round(fine_rate / plain_rate, 1),
        "fine_best": {"map": round(best_map, 6), **best.__dict__},
    }))


if __name__ == "__main__":
    main()
