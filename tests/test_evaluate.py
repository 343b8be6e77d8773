import json
import subprocess
import sys

import pandas as pd
import pytest

from kit import cli, leaderboard

LABELS = ("patientId,x,y,width,height,Target\n"
          "a,0,0,100,100,1\n"
          "b,,,,,0\n"
          "c,300,300,400,400,1\n"
          "d,,,,,0\n")


@pytest.fixture
def data(in_tmp):
    folder = in_tmp / "data" / "demo"
    folder.mkdir(parents=True)
    (folder / "stage_2_train_labels.csv").write_text(LABELS)
    (folder / "demo_test_labels.csv").write_text("patientId,x,y,width,height,Target\n"
                                                 "t1,312,312,400,400,1\nt2,,,,,0\n")
    # a: perfect; b: a false box (0); c: IoU exactly 0.5 (3/8); d: nothing (excluded)
    (in_tmp / "sub.csv").write_text("patientId,PredictionString\n"
                                    "a,0.9 0 0 100 100\n"
                                    "b,0.3 0 0 50 50\n"
                                    "c,0.8 300 300 400 200\n"
                                    "d,\n")
    return folder


def test_score_json_hand_checked(data, capsys):
    assert cli.main(["score", "--submission", "sub.csv", "--json", "--per-image", "per.csv",
                     "--baseline", "none", "center"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map"] == pytest.approx((1 + 0 + 3 / 8) / 3, abs=1e-15)
    assert (result["images"], result["excluded"]) == (4, 1)
    assert result["prf"]["0.5"] == {"tp": 2, "fp": 1, "fn": 0, "precision": 2 / 3,
                                    "recall": 1.0, "f1": pytest.approx(0.8)}
    assert result["prf"]["0.75"]["tp"] == 1
    # baselines on the same ids: none -> 0 on a and c, b and d excluded; center box on every
    # image: a 0 (disjoint), b 0, c: [312,312,400,400] vs [300,300,400,400] = 388^2/(2*400^2-388^2)
    assert result["baselines"]["none"] == 0.0
    iou = 388 ** 2 / (2 * 400 ** 2 - 388 ** 2)
    assert iou > 0.75 and result["baselines"]["center"] == pytest.approx(1 / 4, abs=1e-15)
    assert open("per.csv").read().splitlines() == ["patientId,score", "a,1.0", "b,0.0",
                                                    "c,0.375", "d,"]


def test_score_appends_one_leaderboard_row_per_file(data, capsys):
    assert cli.main(["score", "--submission", "sub.csv"]) == 0
    out = capsys.readouterr().out
    assert "mAP@[0.40:0.75] = 0.4583" in out and "leaderboard: added" in out
    assert cli.main(["score", "--submission", "sub.csv"]) == 0     # same bytes: no new row
    board = leaderboard.read()
    assert len(board) == 1 and board["map"].iloc[0] == pytest.approx(11 / 24)
    assert board["F1@0.5"].iloc[0] == pytest.approx(0.8) and len(board["sha256"].iloc[0]) == 64
    assert cli.main(["score", "--submission", "sub.csv", "--no-leaderboard", "--strict"]) == 0
    assert len(leaderboard.read()) == 1


def test_score_picks_the_labels_that_cover_the_submission(data, capsys):
    (data.parent.parent / "test.csv").write_text("patientId,PredictionString\n"
                                                 "t1,1 312 312 400 400\nt2,\n")
    assert cli.main(["score", "--submission", "test.csv", "--json", "--no-leaderboard"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == 1.0
    (data.parent.parent / "alien.csv").write_text("patientId,PredictionString\nzz,\n")
    assert cli.main(["score", "--submission", "alien.csv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zz'" in err and "--labels" in err


def test_score_raw_uses_every_row_and_the_val_ids(data, capsys):
    run = data.parent.parent / "runs" / "r"
    run.mkdir(parents=True)
    (run / "raw_val.csv").write_text("patientId,score,x,y,w,h\n"
                                     "a,0.01,0,0,100,100\na,0.02,0,0,100,100\n")
    (run / "val_ids.csv").write_text("patientId\na\nc\n")
    assert cli.main(["score", "--submission", str(run / "raw_val.csv"), "--raw", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # a: TP 1 + FP 1 -> 0.5; c (no rows) -> 0
    assert result["map"] == 0.25 and result["images"] == 2
    assert not leaderboard.read().shape[0]                     # raw tables are not submissions


def test_score_bad_file_one_line_error(data, capsys):
    (data.parent.parent / "bad.csv").write_text("patientId,PredictionString\na,0.5 1 2\n")
    assert cli.main(["score", "--submission", "bad.csv"]) == 2
    err = capsys.readouterr().err
    assert err == "error: bad.csv, row 2, field 'PredictionString': 3 numbers: must be groups of 5 (conf x y w h)\n"


def test_score_and_leaderboard_do_not_import_tensorflow():
    code = ("import sys; from kit import cli; cli.build_parser('score'); "
            "cli.build_parser('leaderboard'); import kit.evaluate, kit.metric, kit.leaderboard; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_labels_center_baseline(real_rsna, in_tmp, capsys):
    """The fixed centre box on the real positives + negatives of the training labels."""
    ids = pd.read_csv(real_rsna / "stage_2_train_labels.csv")["patientId"].unique()[:2000]
    pd.DataFrame({"patientId": ids, "PredictionString": ""}).to_csv("empty.csv", index=False)
    assert cli.main(["score", "--submission", "empty.csv", "--data", str(real_rsna), "--json",
                     "--baseline", "center", "--no-leaderboard"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map"] == 0.0 and 0 < result["baselines"]["center"] < 0.1
