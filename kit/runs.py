"""Run folders: runs/<name>-<YYYYmmdd-HHMMSS>/ hold everything one training run produced.

Files in a run (all optional until the step that writes them ran):
config.json, checkpoints/, history.csv, curves.png, raw_val.csv, raw_test.csv,
postprocess.json, tuning.png, report.md. ``--run latest`` is the newest run folder.
"""
from __future__ import annotations

import time
from pathlib import Path

from kit import paths
from kit.errors import KitError

RAW_COLUMNS = ["patientId", "score", "x", "y", "w", "h"]   # raw detections, original 1024 px


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
