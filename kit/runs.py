"""Run folders: runs/<name>-<YYYYmmdd-HHMMSS>/ hold everything one training run produced.

Files in a run (all optional until the step that writes them ran):
config.json, checkpoints/, history.csv, curves.png, raw_val.csv, raw_test.csv (+ their
raw_<split>_images.csv), postprocess.json, tuning.png, report.md, ensemble.json (ensembles only). ``--run latest`` is the newest run folder.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from kit import paths
from kit.errors import KitError

RAW_COLUMNS = ["patientId", "score", "x", "y", "w", "h"]   # raw detections, original 1024 px
# image-level evidence next to raw_<split>.csv: one row per predicted image (detections or not)
IMAGE_COLUMNS = ["patientId", "p_opacity"]                  # P(Lung Opacity) of the classifier


BEST_WEIGHTS, BEST_INFO = "best.h5", "best.json"   # best epoch by val_map (kit.callbacks)
TRAIN_STATE = "train_state.json"                    # how training ended (kit.train)


def trained_epochs(run: Path) -> int:
    """Last epoch with a checkpoint (mask_rcnn_*_NNNN.h5) in the run (0 when none)."""
    epochs = [int(m.group(1)) for p in Path(run).rglob("mask_rcnn_*.h5")
              if (m := re.search(r"_(\d{4})\.h5$", p.name))]
    return max(epochs, default=0)


def raw_path(run: Path, split: str) -> Path:
    """runs/<run>/raw_<split>.csv: raw detections (RAW_COLUMNS)."""
    return Path(run) / f"raw_{split}.csv"


def image_scores_path(run: Path, split: str) -> Path:
    """runs/<run>/raw_<split>_images.csv: each predicted image's P(Lung Opacity) (IMAGE_COLUMNS)."""
    return Path(run) / f"raw_{split}_images.csv"


def new_run_dir(name: str, runs_dir: Path = paths.RUNS_DIR) -> Path:
    """Create and return runs/<name>-<timestamp>/ (never an existing folder)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = Path(runs_dir) / f"{name}-{stamp}"
    n = 1
    while run.exists():
        n += 1
        run = Path(runs_dir) / f"{name}-{stamp}-{n}"
    run.mkdir(parents=True)
    return run


def resolve_run(run: str | Path, runs_dir: Path = paths.RUNS_DIR) -> Path:
    """A run folder from a path, a folder name under runs/, or ``latest`` (newest by mtime)."""
    runs_dir = Path(runs_dir)
    if str(run) == "latest":
        candidates = [p for p in runs_dir.glob("*") if p.is_dir()] if runs_dir.is_dir() else []
        if not candidates:
            raise KitError(f"no run folders under {runs_dir}/: train one first (make train)")
        return max(candidates, key=lambda p: p.stat().st_mtime)
    for candidate in (Path(run), runs_dir / str(run)):
        if candidate.is_dir():
            return candidate
    raise KitError(f"run {run!r} not found (looked for {run} and {runs_dir / str(run)})")
