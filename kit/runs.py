"""Run folders: runs/<name>-<YYYYmmdd-HHMMSS>/ hold everything one training run produced.

Files in a run (all optional until the step that writes them ran):
config.json, train_ids.csv, val_ids.csv, <name><stamp>/mask_rcnn_*_NNNN.h5 (epoch checkpoints),
best.h5 + best.json, train_state.json, history.csv, curves.png, raw_val.csv, raw_test.csv (+ their
raw_<split>_images.csv), postprocess.json, tuning.png, report.md, ensemble.json (ensembles only).
``--run latest`` is the newest run folder.

This module is the one place that finds a run's checkpoints (:func:`checkpoints`,
:func:`checkpoint_of`, :func:`trained_epochs`) and reads its tables (:func:`read_raw`,
:func:`read_image_scores`, :func:`image_scores_beside`, :func:`read_ids`, :func:`val_ids`).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import read_csv

RAW_COLUMNS = ["patientId", "score", "x", "y", "w", "h"]   # raw detections, original 1024 px
# image-level evidence next to raw_<split>.csv: one row per predicted image (detections or not)
IMAGE_COLUMNS = ["patientId", "p_opacity"]                  # P(Lung Opacity) of the classifier


BEST_WEIGHTS, BEST_INFO = "best.h5", "best.json"   # best epoch by val_map (kit.train.callbacks)
TRAIN_STATE = "train_state.json"                    # how training ended (kit.train.trainer)


VAL_IDS, TRAIN_IDS = "val_ids.csv", "train_ids.csv"   # the run's split (kit.train.trainer)
_EPOCH = re.compile(r"_(\d{4})\.h5$")


def checkpoints(run: Path) -> list[Path]:
    """The run's epoch checkpoints (mask_rcnn_*_NNNN.h5, searched recursively), oldest epoch
    first (same epoch: by path, so a later log folder comes last)."""
    found = [(int(m.group(1)), p) for p in Path(run).rglob("mask_rcnn_*.h5")
             if (m := _EPOCH.search(p.name))]
    return [p for _, p in sorted(found)]


def trained_epochs(run: Path) -> int:
    """Last epoch with a checkpoint (mask_rcnn_*_NNNN.h5) in the run (0 when none)."""
    found = checkpoints(run)
    return int(_EPOCH.search(found[-1].name).group(1)) if found else 0


def checkpoint_of(run: Path, which: str = "last") -> Path:
    """A run's weights: ``last`` = the newest epoch checkpoint, ``best`` = best.h5 (best val_map;
    the newest checkpoint when the run has none), anything else = a path to a .h5 file."""
    if which not in ("best", "last"):
        path = Path(which)
        if not path.is_file():
            raise KitError("checkpoint not found (use best, last or a .h5 file)", path=path)
        return path
    if which == "best" and (Path(run) / BEST_WEIGHTS).is_file():
        return Path(run) / BEST_WEIGHTS
    found = checkpoints(run)
    if not found:
        raise KitError(f"no checkpoint (mask_rcnn_*.h5) under {run}: train it first")
    return found[-1]


def run_order(run: Path) -> tuple[str, str]:
    """Sort key of run folders, newest last: the <YYYYmmdd-HHMMSS> stamp in the name, then the name."""
    stamp = re.search(r"\d{8}-\d{6}", Path(run).name)
    return (stamp.group(0) if stamp else "", Path(run).name)


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


# ---- the run's tables -------------------------------------------------------------------
def read_raw(path: str | Path) -> pd.DataFrame:
    """A raw detections CSV (RAW_COLUMNS), checked row by row; KitError names file, row, field.

    Scores must lie in [0, 1], w and h must be > 0, and each box must overlap the 1024-px frame.
    """
    path = Path(path)
    raw = read_csv(path, RAW_COLUMNS, dtype={"patientId": str}, keep_default_na=False,
                   not_found="raw detections not found: run `python -m kit predict` first")
    raw = raw[RAW_COLUMNS].copy()

    def fail(bad: np.ndarray, field: str, message: str) -> None:
        if bad.any():
            raise KitError(message, path=path, row=int(np.flatnonzero(bad)[0]) + 2, field=field)

    fail((raw["patientId"].str.strip() == "").to_numpy(), "patientId", "empty patientId")
    for column in RAW_COLUMNS[1:]:
        values = pd.to_numeric(raw[column], errors="coerce").astype("float64")
        fail(~np.isfinite(values.to_numpy()), column, "not a number")
        raw[column] = values
    s, x, y, w, h = (raw[c].to_numpy() for c in RAW_COLUMNS[1:])
    fail((s < 0) | (s > 1), "score", "score must be in [0, 1]")
    fail(w <= 0, "w", "w must be > 0")
    fail(h <= 0, "h", "h must be > 0")
    side = paths.IMAGE_SIZE
    fail((x >= side) | (x + w <= 0), "x", f"box lies outside the {side}-px frame")
    fail((y >= side) | (y + h <= 0), "y", f"box lies outside the {side}-px frame")
    return raw


def read_image_scores(path: str | Path) -> dict[str, float]:
    """An image scores CSV (IMAGE_COLUMNS) -> patientId -> p_opacity; KitError names file, row,
    field (empty or duplicate patientId, p_opacity not a number or outside [0, 1])."""
    path = Path(path)
    df = read_csv(path, IMAGE_COLUMNS, dtype={"patientId": str}, keep_default_na=False,
                  not_found="image scores not found: run `python -m kit predict` first")
    ids = df["patientId"].str.strip()
    p = pd.to_numeric(df["p_opacity"], errors="coerce").to_numpy(np.float64)
    for bad, field, message in [((ids == "").to_numpy(), "patientId", "empty patientId"),
                                (ids.duplicated().to_numpy(), "patientId", "duplicate patientId"),
                                (~np.isfinite(p), "p_opacity", "not a number"),
                                ((p < 0) | (p > 1), "p_opacity", "p_opacity must be in [0, 1]")]:
        if bad.any():
            raise KitError(message, path=path, row=int(np.flatnonzero(bad)[0]) + 2, field=field)
    return dict(zip(ids, p.tolist()))


def image_scores_beside(raw_path: str | Path) -> dict[str, float] | None:
    """The image scores next to a raw table, or None when there is no such file (runs predicted
    before the image classifier existed). ``runs/<run>/raw_val.csv`` -> ``raw_val_images.csv``
    (:func:`image_scores_path`); any ``X.csv`` -> ``X_images.csv``."""
    raw_path = Path(raw_path)
    path = raw_path.with_name(f"{raw_path.stem}_images.csv")
    return read_image_scores(path) if path.exists() else None


def read_ids(path: str | Path) -> list[str]:
    """patientIds of a one-column CSV such as runs/<run>/val_ids.csv (header ``patientId``)."""
    path = Path(path)
    df = read_csv(path, ["patientId"], not_found="id list not found", dtype=str,
                  keep_default_na=False)
    ids = df["patientId"].str.strip()
    bad = (ids == "") | ids.duplicated()
    if bad.any():
        raise KitError("empty or duplicate patientId", path=path,
                       row=int(np.flatnonzero(bad.to_numpy())[0]) + 2, field="patientId")
    return ids.tolist()


def val_ids(run: Path) -> list[str]:
    """The run's validation patientIds (val_ids.csv, in order)."""
    return read_ids(Path(run) / VAL_IDS)
