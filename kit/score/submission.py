"""Submission CSVs: write / read / validate, and the command ``validate`` (``submit``: kit.score.submit).

Format (Kaggle's): header ``patientId,PredictionString``; one row per test image;
PredictionString = ``conf x y w h conf x y w h ...`` (top-left x, y and w, h in pixels of the
1024-px image), empty for no box. We write confidences with 4 decimals and coordinates with 1
decimal: the corners are rounded (so x + w never leaves the frame by rounding) and w, h are the
differences of the rounded corners; a box thinner than 0.05 px after rounding is dropped. Boxes
keep their input order (the metric ranks by confidence itself, ties later box first).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import read_csv, write_csv

COLUMNS = ["patientId", "PredictionString"]
CONF_DECIMALS, COORD_DECIMALS = 4, 1
Preds = Mapping[str, tuple[np.ndarray, np.ndarray]]   # patientId -> (scores (n,), boxes (n,4) xywh)


def format_prediction_string(scores: np.ndarray, boxes: np.ndarray) -> str:
    """``conf x y w h ...`` of one image; scores (n,), boxes (n,4) xywh in 1024-px pixels."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1 = boxes[:, 0].round(COORD_DECIMALS), boxes[:, 1].round(COORD_DECIMALS)
    x2 = (boxes[:, 0] + boxes[:, 2]).round(COORD_DECIMALS)
    y2 = (boxes[:, 1] + boxes[:, 3]).round(COORD_DECIMALS)
    parts = [f"{s:.{CONF_DECIMALS}f} {a:.1f} {b:.1f} {c - a:.1f} {d - b:.1f}"
             for s, a, b, c, d in zip(scores, x1, y1, x2, y2) if c - a > 0 and d - b > 0]
    return " ".join(parts)


def submission_frame(preds: Preds, patient_ids: Sequence[str]) -> pd.DataFrame:
    """One row per id in the given order; ids without predictions get an empty string."""
    empty = (np.zeros(0), np.zeros((0, 4)))
    strings = [format_prediction_string(*preds.get(pid, empty)) for pid in patient_ids]
    return pd.DataFrame({"patientId": list(patient_ids), "PredictionString": strings})


def write_submission(path: str | Path, preds: Preds, patient_ids: Sequence[str]) -> None:
    """Write a submission (atomic) with one row per ``patient_ids`` entry, in that order."""
    write_csv(path, submission_frame(preds, patient_ids))


def _load(path: Path) -> pd.DataFrame:
    df = read_csv(path, not_found="submission not found", dtype=str, keep_default_na=False,
                  na_filter=False)
    if list(df.columns) != COLUMNS:
        raise KitError(f"the header must be exactly {','.join(COLUMNS)} (got "
                       f"{','.join(map(str, df.columns))})", path=path, row=1)
    return df


def _parse(text: str) -> np.ndarray:
    """PredictionString -> float64 (n, 5) [conf, x, y, w, h]; ValueError when malformed."""
    tokens = text.split()
    if len(tokens) % 5:
        raise ValueError(f"{len(tokens)} numbers: must be groups of 5 (conf x y w h)")
    try:
        values = np.array([float(t) for t in tokens], np.float64).reshape(-1, 5)
    except ValueError:
        raise ValueError("holds something that is not a number") from None
    if not np.isfinite(values).all():
        raise ValueError("holds a non-finite number")
    return values


def read_submission(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every row of a submission -> (scores (n,), boxes (n,4) xywh); empty rows give n = 0.

    KitError on a bad header, a duplicate patientId or a malformed PredictionString.
    """
    path = Path(path)
    df = _load(path)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, (pid, text) in enumerate(zip(df["patientId"].str.strip(), df["PredictionString"])):
        if not pid or pid in out:
            raise KitError("empty or duplicate patientId", path=path, row=i + 2, field="patientId")
        try:
            values = _parse(text)
        except ValueError as exc:
            raise KitError(str(exc), path=path, row=i + 2, field="PredictionString") from None
        out[pid] = (values[:, 0], values[:, 1:])
    return out


def frame_problems(df: pd.DataFrame, path: Path, sample_ids: Sequence[str] | None) -> list[str]:
    """Every problem of a submission table, one line each naming file, row and field."""
    problems: list[str] = []

    def add(message: str, row: int | None = None, field: str | None = None) -> None:
        problems.append(str(KitError(message, path=path, row=row, field=field)))

    seen: dict[str, int] = {}
    side = paths.IMAGE_SIZE
    for i, (pid, text) in enumerate(zip(df["patientId"].str.strip(), df["PredictionString"])):
        row = i + 2
        if not pid:
            add("empty patientId", row, "patientId")
        elif pid in seen:
            add(f"duplicate patientId {pid!r} (first at row {seen[pid]})", row, "patientId")
        else:
            seen[pid] = row
        try:
            values = _parse(text)
        except ValueError as exc:
            add(str(exc), row, "PredictionString")
            continue
        for j, (conf, x, y, w, h) in enumerate(values, 1):
            where = f"box {j} ({conf:g} {x:g} {y:g} {w:g} {h:g})"
            if not 0 <= conf <= 1:
                add(f"{where}: confidence must be in [0, 1]", row, "PredictionString")
            if w <= 0 or h <= 0:
                add(f"{where}: w and h must be > 0", row, "PredictionString")
            if x < 0 or y < 0 or x + w > side or y + h > side:
                add(f"{where}: box must lie inside the {side}x{side} image", row, "PredictionString")
    if sample_ids is not None:
        expected = set(sample_ids)
        for pid, row in seen.items():
            if pid not in expected:
                add(f"patientId {pid!r} is not in the sample submission", row, "patientId")
        missing = [pid for pid in sample_ids if pid not in seen]
        for pid in missing:
            add(f"sample patientId {pid!r} has no row", field="patientId")
    return problems


def validate_submission(path: str | Path, sample_path: str | Path | None = None) -> list[str]:
    """Problems of a submission file (empty list: valid). With ``sample_path``, every sample
    patientId must appear exactly once and no other id may appear."""
    path = Path(path)
    sample_ids = None
    if sample_path is not None:
        from kit.data.labels import read_sample_submission

        sample_ids = read_sample_submission(sample_path)["patientId"].tolist()
    try:
        df = _load(path)
    except KitError as exc:
        return [str(exc)]
    return frame_problems(df, path, sample_ids)


def sample_path_of(args: argparse.Namespace, data_dir: Path | None = None) -> Path | None:
    if getattr(args, "sample", None):
        return Path(args.sample)
    from kit.paths import default_data_dir

    path = Path(args.data or data_dir or default_data_dir()) / paths.SAMPLE_SUBMISSION
    return path if path.is_file() or args.data else None


def add_validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--submission", type=Path, required=True, help="submission CSV to check")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sample", type=Path, default=None, help="sample submission CSV")
    group.add_argument("--data", type=Path, default=None,
                       help=f"data folder holding {paths.SAMPLE_SUBMISSION} (default: data/rsna "
                            "if present, else data/demo)")


def run_validate(args: argparse.Namespace) -> int:
    sample = sample_path_of(args)
    if sample is None:
        print("note: no sample submission found: checking the format only (pass --sample)")
    problems = validate_submission(args.submission, sample)
    for line in problems:
        print(line)
    if problems:
        print(f"error: {len(problems)} problem(s) in {args.submission}", file=sys.stderr)
        return 2
    print(f"OK: {len(_load(args.submission))} rows")
    return 0
