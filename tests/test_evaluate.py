import json
import subprocess
import sys

import pandas as pd
import pytest

import numpy as np

from kit import cli
from kit.score import leaderboard
from kit.score.metric import roc_auc, roc_curve

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


def test_score_raw_reports_the_classifier_auc_from_the_image_scores(data, capsys):
    run = data.parent.parent / "runs" / "r"
    run.mkdir(parents=True)
    (run / "raw_val.csv").write_text("patientId,score,x,y,w,h\na,0.9,0,0,100,100\n")
    (run / "val_ids.csv").write_text("patientId\na\nb\nc\nd\n")
    args = ["score", "--submission", str(run / "raw_val.csv"), "--raw", "--json"]
    assert cli.main(args) == 0
    assert "classifier" not in json.loads(capsys.readouterr().out)      # no images table
    # positives a 0.9, c 0.4; negatives b 0.4, d 0.1: pairs (a,b) 1 (a,d) 1 (c,b) 1/2 (c,d) 1
    (run / "raw_val_images.csv").write_text("patientId,p_opacity\na,0.9\nb,0.4\nc,0.4\nd,0.1\n")
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["classifier"] == {"auc": 0.875, "images": 4}
    assert cli.main(args[:-1]) == 0
    assert "image classifier ROC AUC = 0.8750 on 4 images" in capsys.readouterr().out


def test_roc_auc_is_the_mann_whitney_statistic_hand_checked():
    # positives 0.8, 0.35; negatives 0.1, 0.4: 0.8 beats both, 0.35 beats 0.1 only -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # ties count one half: positives 0.5, 0.5 vs negatives 0.5, 0.2 -> (1/2 + 1) * 2 / 4
    assert roc_auc([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.2]) == 0.75
    assert roc_auc([1, 0], [0.3, 0.3]) == 0.5 and roc_auc([0, 1], [0.0, 1.0]) == 1.0
    assert roc_auc([1, 0, 0], [0.0, 0.5, 1.0]) == 0.0
    with pytest.raises(ValueError, match="positive and negative"):
        roc_auc([1, 1], [0.2, 0.3])


def test_roc_curve_points_and_area_equal_the_auc():
    fpr, tpr = roc_curve([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.2])
    # threshold 0.5: both positives and one negative at once (a diagonal step), then 0.2
    assert fpr.tolist() == [0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 1.0, 1.0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        positive = rng.random(30) < 0.3
        positive[:2] = True, False
        scores = rng.integers(0, 8, 30) / 7                       # many ties
        pos, neg = scores[positive], scores[~positive]
        pairs = (pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()
        assert roc_auc(positive, scores) == pairs / (len(pos) * len(neg))   # exact
        fpr, tpr = roc_curve(positive, scores)
        assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(positive, scores), abs=1e-12)


def test_score_bad_file_one_line_error(data, capsys):
    (data.parent.parent / "bad.csv").write_text("patientId,PredictionString\na,0.5 1 2\n")
    assert cli.main(["score", "--submission", "bad.csv"]) == 2
    err = capsys.readouterr().err
    assert err == "error: bad.csv, row 2, field 'PredictionString': 3 numbers: must be groups of 5 (conf x y w h)\n"


def test_score_and_leaderboard_do_not_import_tensorflow():
    code = ("import sys; from kit import cli; cli.build_parser('score'); "
            "cli.build_parser('leaderboard'); import kit.score.score, kit.score.metric, kit.score.leaderboard; "
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
