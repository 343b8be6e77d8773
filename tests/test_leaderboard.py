import json

import pytest

from kit import cli
from kit.errors import KitError
from kit.score import leaderboard


def row(file, value, sha, split="test", labels="L"):
    return {"time": "2024-01-01 00:00:00", "file": file, "sha256": sha, "split": split,
            "labels": labels, "ids": "", "images": 10, "missing": 0, "excluded": 2, "map": value,
            "run": "", "preset": "", "seed": None, "config": "", "commit": "",
            "P@0.5": 0.5, "R@0.5": 0.5, "F1@0.5": 0.5, "postprocess": ""}


def test_append_dedupes_and_keeps_column_order(in_tmp):
    assert leaderboard.append(row("a.csv", 0.1, "1" * 64))
    assert leaderboard.append(row("b.csv", 0.3, "2" * 64))
    assert not leaderboard.append(row("a-copy.csv", 0.1, "1" * 64))   # same bytes, labels, score
    assert leaderboard.append(row("a.csv", 0.1, "1" * 64, split="val"))  # another split: a row
    board = leaderboard.read()
    assert board["file"].tolist() == ["a.csv", "b.csv", "a.csv"]
    assert list(board.columns)[:len(leaderboard.FIRST)] == leaderboard.FIRST
    assert board.columns[-1] == "postprocess"
    assert not list(in_tmp.glob("submissions/.*.tmp"))               # atomic: no temp left


def test_leaderboard_cli_sorted_best_first(in_tmp, capsys):
    assert cli.main(["leaderboard"]) == 0
    assert "no scores yet" in capsys.readouterr().out
    for name, value in [("a.csv", 0.1), ("b.csv", 0.3), ("c.csv", 0.2)]:
        leaderboard.append(row(name, value, name * 8))
    assert cli.main(["leaderboard", "--json", "--top", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["rank"], r["file"]) for r in rows] == [(1, "b.csv"), (2, "c.csv")]
    assert cli.main(["leaderboard"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "== test scores (held-out labels) against L =="
    assert "b.csv" in lines[2] and "c.csv" in lines[3] and "a.csv" in lines[4]


def test_val_and_test_scores_are_never_ranked_together(in_tmp, capsys):
    """A val score that tune optimised (0.9) is not ranked above a held-out test score (0.3)."""
    leaderboard.append(row("runs/r/val_submission.csv", 0.9, "v" * 64, "val", "train.csv"))
    leaderboard.append(row("submissions/r.csv", 0.3, "t" * 64, "test", "demo_test_labels.csv"))
    leaderboard.append(row("runs/s/val_submission.csv", 0.8, "w" * 64, "val", "train.csv"))
    assert cli.main(["leaderboard"]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert len(blocks) == 2
    test, val = (block.splitlines() for block in blocks)
    assert test[0] == "== test scores (held-out labels) against demo_test_labels.csv =="
    assert val[0].startswith("== val scores (each run's validation images, where tune chose the "
                             "post-processing: optimistic) against train.csv")
    assert test[1].split()[:4] == ["rank", "map", "F1@0.5", "P@0.5"]
    assert test[2].split()[:2] == ["1", "0.3000"] and len(test) == 3
    assert val[2].split()[:2] == ["1", "0.9000"] and val[3].split()[:2] == ["2", "0.8000"]
    assert cli.main(["leaderboard", "--json", "--top", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["split"], r["labels"], r["rank"], r["map"]) for r in rows] == [
        ("test", "demo_test_labels.csv", 1, 0.3), ("val", "train.csv", 1, 0.9)]


def test_rows_of_an_older_kit_show_as_an_unrecorded_split(in_tmp, capsys):
    (in_tmp / "submissions").mkdir()
    (in_tmp / "submissions" / "leaderboard.csv").write_text(
        "time,file,sha256,run,labels,images,excluded,map,postprocess\n"
        "2024-01-01 00:00:00,old.csv," + "0" * 64 + ",,L,4,1,0.5,\n")
    leaderboard.append(row("new.csv", 0.2, "n" * 64))
    assert cli.main(["leaderboard"]) == 0
    out = capsys.readouterr().out
    assert out.index("== test scores (held-out labels) against L") < \
        out.index("== scores of an unrecorded split (rows written by an older kit) against L")
    assert "<NA>" not in out


def test_unreadable_leaderboard_is_a_clear_error(in_tmp, capsys):
    (in_tmp / "submissions").mkdir()
    (in_tmp / "submissions" / "leaderboard.csv").write_bytes(b"\xff\xfe\x00bad")
    assert cli.main(["leaderboard"]) == 2
    assert "leaderboard.csv" in capsys.readouterr().err


def test_a_file_that_is_not_a_leaderboard_is_one_line_not_a_key_error(in_tmp, capsys):
    (in_tmp / "sub.csv").write_text("patientId,PredictionString\na,\n")
    assert cli.main(["leaderboard", "--leaderboard", "sub.csv"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("error: sub.csv: not a leaderboard: no file, sha256, map column "
                                 "(its columns: patientId, PredictionString); pass the CSV "
                                 "`score` writes\n")
    with pytest.raises(KitError, match="not a leaderboard"):
        leaderboard.append(row("x.csv", 0.1, "x" * 64), "sub.csv")
    assert (in_tmp / "sub.csv").read_text() == "patientId,PredictionString\na,\n"


@pytest.mark.parametrize("value", [float("nan")])
def test_rows_without_map_sort_last(in_tmp, value):
    leaderboard.append(row("x.csv", value, "x" * 64))
    leaderboard.append(row("y.csv", 0.05, "y" * 64))
    assert leaderboard.ranked(leaderboard.read())["file"].tolist() == ["y.csv", "x.csv"]
