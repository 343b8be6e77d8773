"""Local leaderboard: one row per scored submission file in submissions/leaderboard.csv.

Columns: time, file, sha256 (of the file's bytes), then what the row was scored on: split
(test: held-out labels; val: the run's validation images, where ``tune`` chose the
post-processing, so optimistic; subset: an ``--ids`` list; train: every training image), labels
(the ground truth file), ids (the id list, empty for every image of the labels), images,
missing (images of the set the file had no row for, scored as empty), excluded, map
(competition mAP@[0.40:0.75]); then what made it: run, preset, seed, config (sha256 prefix of
the run's config.json), commit (the kit's git commit when it was scored); then P@t, R@t, F1@t
per IoU t scored, and postprocess (the run's postprocess.json, compact JSON). Scoring the same
file bytes on the same split, labels and images again adds no row.

``leaderboard`` ranks rows only within one (split, labels) group, each under a heading that
says which it is, test first: a val score is never ranked beside a test score. Rows written
before the split was recorded form their own group.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import write_csv

FIRST = ["time", "file", "sha256", "split", "labels", "ids", "images", "missing", "excluded",
         "map", "run", "preset", "seed", "config", "commit"]
REQUIRED = ("file", "sha256", "map")
TEXT = ("file", "sha256", "split", "labels", "ids", "run", "preset", "config", "commit",
        "postprocess")
COUNTS = ("images", "missing", "excluded", "seed")
SAME = ("sha256", "split", "labels", "images")     # with map: the same score again
GROUPS = {"test": "test scores (held-out labels)",
          "val": "val scores (each run's validation images, where tune chose the "
                 "post-processing: optimistic)",
          "subset": "subset scores (the images of an --ids list)",
          "train": "train scores (every image of the training labels)"}
UNRECORDED = "scores of an unrecorded split (rows written by an older kit)"


def read(path: str | Path = paths.LEADERBOARD) -> pd.DataFrame:
    """The leaderboard as written (empty frame when there is none yet); KitError when the file
    is not a leaderboard."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=FIRST)
    try:
        board = pd.read_csv(path, dtype={c: str for c in TEXT})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise KitError(f"not a readable CSV ({str(exc).splitlines()[0]}); move it aside",
                       path=path) from None
    lacking = [c for c in REQUIRED if c not in board.columns]
    if lacking:
        raise KitError(f"not a leaderboard: no {', '.join(lacking)} column (its columns: "
                       f"{', '.join(map(str, board.columns[:6]))}); pass the CSV `score` writes",
                       path=path)
    for column in TEXT:
        if column in board.columns:
            board[column] = board[column].fillna("")
    try:
        board["map"] = pd.to_numeric(board["map"])
        for column in COUNTS:
            if column in board.columns:
                board[column] = pd.to_numeric(board[column]).astype("Int64")
    except (ValueError, TypeError) as exc:
        raise KitError(f"not a leaderboard: {exc}", path=path) from None
    return board


def append(row: dict, path: str | Path = paths.LEADERBOARD) -> bool:
    """Add ``row`` (atomic rewrite); False when a row with the same sha256, split, labels,
    images and map exists."""
    board = read(path)
    if len(board):
        same = board["map"].round(10) == round(float(row.get("map", float("nan"))), 10)
        for key in SAME:
            same &= (board[key] == row.get(key)) if key in board.columns else False
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
    """Grouped by (split, labels), test first, then val, subset, train, unrecorded; within a
    group best mAP first (ties: older first), rows without a mAP last. Adds ``rank`` (within
    its group)."""
    board = board.copy()
    split = board["split"] if "split" in board.columns else pd.Series("", index=board.index)
    board["split"] = split.fillna("").astype(str)
    order = {name: i for i, name in enumerate(GROUPS)}
    board["_group"] = board["split"].map(lambda s: order.get(s, len(order)))
    labels = board["labels"].fillna("").astype(str) if "labels" in board.columns else ""
    board["_labels"] = labels
    board = board.sort_values("map", ascending=False, kind="stable", na_position="last")
    board = board.sort_values(["_group", "split", "_labels"], kind="stable")
    board.insert(0, "rank", board.groupby(["split", "_labels"], sort=False).cumcount() + 1)
    return board.drop(columns=["_group", "_labels"])


def heading(split: str, labels: str) -> str:
    """The words over one group of rows."""
    what = GROUPS.get(split, UNRECORDED if not split else f"{split} scores")
    return f"== {what} against {labels or '?'} =="


def add_leaderboard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top", type=int, default=None,
                   help="show only the N best rows of each (split, labels) group")
    p.add_argument("--json", action="store_true",
                   help="print the rows as a JSON list (in the order shown; rank is within the "
                        "row's split and labels)")
    p.add_argument("--leaderboard", type=Path, default=paths.LEADERBOARD, help="leaderboard CSV")


def run_leaderboard(args: argparse.Namespace) -> int:
    board = read(args.leaderboard)
    if not board.empty:
        board = ranked(board)
        if args.top is not None:
            board = board[board["rank"] <= args.top]
    if args.json:
        print(json.dumps(json.loads(board.to_json(orient="records")), indent=2))
        return 0
    if board.empty:
        print(f"no scores yet in {args.leaderboard}: run `python -m kit score --submission S`")
        return 0
    shown = [c for c in ("rank", "map", "F1@0.5", "P@0.5", "R@0.5", "images", "missing", "file",
                         "run", "preset", "seed", "config", "commit", "time")
             if c in board.columns]
    labels = board["labels"] if "labels" in board.columns else pd.Series("", index=board.index)
    blocks = []
    for (split, label), group in board.groupby([board["split"], labels.fillna("")], sort=False):
        table = group[shown].copy()
        for column in COUNTS:      # nullable integers: an empty cell, not <NA>
            if column in table.columns:
                table[column] = table[column].astype(object).where(table[column].notna(), "")
        table = table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")
        blocks.append(f"{heading(split, label)}\n{table}")
    print("\n\n".join(blocks))
    return 0
