"""Local leaderboard: one row per scored submission file in submissions/leaderboard.csv.

Columns: time, file, sha256 (of the file's bytes), run, labels (the ground truth used), images,
excluded, map (competition mAP@[0.40:0.75]), then P@t, R@t, F1@t per IoU t scored, and
postprocess (the run's postprocess.json, compact JSON, when known). Scoring the same file bytes
against the same labels again adds no row.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import write_csv

FIRST = ["time", "file", "sha256", "run", "labels", "images", "excluded", "map"]


def read(path: str | Path = paths.LEADERBOARD) -> pd.DataFrame:
    """The leaderboard as written (empty frame when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=FIRST)
    try:
        return pd.read_csv(path, dtype={"sha256": str, "run": str, "postprocess": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise KitError(f"not a readable CSV ({str(exc).splitlines()[0]}); move it aside",
                       path=path) from None


def append(row: dict, path: str | Path = paths.LEADERBOARD) -> bool:
    """Add ``row`` (atomic rewrite); False when a row with the same sha256, labels and map exists."""
    board = read(path)
    if len(board) and {"sha256", "labels", "map"} <= set(board.columns):
        same = ((board["sha256"] == row.get("sha256")) & (board["labels"] == row.get("labels"))
                & (board["map"].round(10) == round(float(row.get("map", float("nan"))), 10)))
        if same.any():
            return False
    new = pd.DataFrame([row])
    board = new if board.empty else pd.concat([board, new], ignore_index=True)
    rest = [c for c in board.columns if c not in FIRST and c != "postprocess"]
    ordered = [c for c in FIRST if c in board.columns] + rest
    ordered += ["postprocess"] if "postprocess" in board.columns else []
    write_csv(path, board[ordered])
    return True


def ranked(board: pd.DataFrame) -> pd.DataFrame:
    """Best mAP first (ties: older first); rows without a mAP last."""
    return board.sort_values("map", ascending=False, kind="stable", na_position="last")


def add_leaderboard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top", type=int, default=None, help="show only the N best rows")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.add_argument("--leaderboard", type=Path, default=paths.LEADERBOARD, help="leaderboard CSV")


def run_leaderboard(args: argparse.Namespace) -> int:
    board = ranked(read(args.leaderboard))
    if args.top is not None:
        board = board.head(args.top)
    if args.json:
        print(json.dumps(json.loads(board.to_json(orient="records")), indent=2))
        return 0
    if board.empty:
        print(f"no scores yet in {args.leaderboard}: run `python -m kit score --submission S`")
        return 0
    shown = [c for c in ("map", "F1@0.5", "P@0.5", "R@0.5", "images", "file", "run", "time")
             if c in board.columns]
    table = board[shown].copy()
    table.insert(0, "rank", range(1, len(table) + 1))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
