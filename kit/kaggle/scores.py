"""Command ``kaggle-scores``: public / private leaderboard scores of our Kaggle submissions."""
from __future__ import annotations

import argparse
import json

from kit.kaggle import api

COLUMNS = ("date", "description", "file", "status", "public", "private")


def _score(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def submission_rows() -> list[dict]:
    """One dict per submission, newest first: date (ISO), description, file, status, public,
    private (floats, None while pending or when Kaggle hides them)."""
    rows = []
    for sub in api.list_submissions():
        date = sub.date.isoformat(sep=" ", timespec="seconds") if sub.date else ""
        rows.append({"date": date, "description": sub.description or "",
                     "file": sub.file_name or "",
                     "status": getattr(sub.status, "name", str(sub.status)),
                     "public": _score(sub.public_score), "private": _score(sub.private_score)})
    return rows


def add_kaggle_scores_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run_kaggle_scores(args: argparse.Namespace) -> int:
    rows = submission_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no submissions yet: python -m kit submit --run RUN --kaggle -m MESSAGE")
        return 0
    cells = [[("-" if r[c] is None else f"{r[c]:.5f}" if isinstance(r[c], float) else str(r[c]))
              for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    for row in [list(COLUMNS), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0
