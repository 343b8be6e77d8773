import json

import pytest

from kit import cli
from kit.score import leaderboard


def row(file, value, sha):
    return {"time": "2024-01-01 00:00:00", "file": file, "sha256": sha, "run": "", "labels": "L",
            "images": 10, "excluded": 2, "map": value, "P@0.5": 0.5, "R@0.5": 0.5, "F1@0.5": 0.5,
            "postprocess": ""}


def test_append_dedupes_and_keeps_column_order(in_tmp):
    assert leaderboard.append(row("a.csv", 0.1, "1" * 64))
    assert leaderboard.append(row("b.csv", 0.3, "2" * 64))
    assert not leaderboard.append(row("a-copy.csv", 0.1, "1" * 64))   # same bytes, labels, score
    board = leaderboard.read()
    assert board["file"].tolist() == ["a.csv", "b.csv"]
    assert list(board.columns)[:8] == leaderboard.FIRST and board.columns[-1] == "postprocess"
    assert not list(in_tmp.glob("submissions/.*.tmp"))               # atomic: no temp left


def test_leaderboard_cli_sorted_best_first(in_tmp, capsys):
    assert cli.main(["leaderboard"]) == 0
    assert "no scores yet" in capsys.readouterr().out
    for name, value in [("a.csv", 0.1), ("b.csv", 0.3), ("c.csv", 0.2)]:
        leaderboard.append(row(name, value, name * 8))
    assert cli.main(["leaderboard", "--json", "--top", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == ["b.csv", "c.csv"]
    assert cli.main(["leaderboard"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "b.csv" in lines[1] and "c.csv" in lines[2] and "a.csv" in lines[3]


def test_unreadable_leaderboard_is_a_clear_error(in_tmp, capsys):
    (in_tmp / "submissions").mkdir()
    (in_tmp / "submissions" / "leaderboard.csv").write_bytes(b"\xff\xfe\x00bad")
    assert cli.main(["leaderboard"]) == 2
    assert "leaderboard.csv" in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan")])
def test_rows_without_map_sort_last(in_tmp, value):
    leaderboard.append(row("x.csv", value, "x" * 64))
    leaderboard.append(row("y.csv", 0.05, "y" * 64))
    assert leaderboard.ranked(leaderboard.read())["file"].tolist() == ["y.csv", "x.csv"]
