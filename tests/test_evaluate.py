import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import numpy as np

from kit import cli
from kit.errors import KitError
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
    assert cli.main(["score", "--submission", "sub.csv", "--literal"]) == 0   # page wording: no row
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


# ---- the scored set: every image of what a file stands for (issue 22) ------------------------

PERFECT = ("patientId,PredictionString\n"
           "a,0.9 0 0 100 100\nb,\nc,0.8 300 300 400 400\nd,\n")


def test_a_missing_positive_image_scores_lower_than_the_complete_submission(data, capsys):
    (data.parent.parent / "perfect.csv").write_text(PERFECT)
    (data.parent.parent / "omits_c.csv").write_text(PERFECT.replace("c,0.8 300 300 400 400\n", ""))
    assert cli.main(["score", "--submission", "perfect.csv", "--json"]) == 0
    perfect = json.loads(capsys.readouterr().out)
    assert (perfect["map"], perfect["missing"], perfect["split"]) == (1.0, 0, "train")
    assert cli.main(["score", "--submission", "omits_c.csv", "--json"]) == 0
    out, err = capsys.readouterr()
    omits = json.loads(out)
    # c has a box and no row: a no-prediction image scores 0 -> (1 + 0) / 2 images not excluded
    assert (omits["map"], omits["images"], omits["missing"]) == (0.5, 4, 1)
    assert err == ("note: 1 of 4 images missing from omits_c.csv: scored as empty (first: 'c'; "
                   "--strict refuses)\n")
    board = leaderboard.ranked(leaderboard.read())
    assert board["file"].tolist() == ["perfect.csv", "omits_c.csv"]
    assert board["map"].tolist() == [1.0, 0.5] and board["missing"].tolist() == [0, 1]


def test_strict_refuses_a_submission_with_a_missing_image(data, capsys):
    (data.parent.parent / "omits_c.csv").write_text(PERFECT.replace("c,0.8 300 300 400 400\n", ""))
    assert cli.main(["score", "--submission", "omits_c.csv", "--strict"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: omits_c.csv: 1 of 4 images of the scored set (all 4 images of ")
    assert "(first: 'c')" in err and not leaderboard.read().shape[0]
    assert cli.main(["score", "--submission", "sub.csv", "--strict", "--json"]) == 0  # complete


def test_only_negative_rows_no_longer_score_nan(data, capsys):
    """The issue's case: a submission of the negative images only was 'nan on 0 images'."""
    (data.parent.parent / "negatives.csv").write_text("patientId,PredictionString\nb,\nd,\n")
    assert cli.main(["score", "--submission", "negatives.csv"]) == 0
    out, err = capsys.readouterr()
    assert "mAP@[0.40:0.75] = 0.0000 on 2 images (2 excluded" in out
    assert "2 of 4 images missing from negatives.csv" in err
    assert leaderboard.read()["map"].tolist() == [0.0]


def test_rows_outside_the_scored_set_are_refused(data, capsys):
    run = data.parent.parent / "runs" / "r"
    run.mkdir(parents=True)
    (run / "val_ids.csv").write_text("patientId\na\nc\n")
    (run / "val_submission.csv").write_text("patientId,PredictionString\na,\nb,\nc,\n")
    assert cli.main(["score", "--submission", "runs/r/val_submission.csv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rows for 1 images outside the scored set" in err
    assert "the 2 ids of runs/r/val_ids.csv" in err and "(first: 'b')" in err
    (data.parent.parent / "ids.csv").write_text("patientId\na\nb\n")
    assert cli.main(["score", "--submission", "sub.csv", "--ids", "ids.csv"]) == 2
    assert "rows for 2 images outside the scored set" in capsys.readouterr().err
    assert not leaderboard.read().shape[0]


def test_a_set_without_positives_is_exit_2_and_no_row(data, capsys):
    (data.parent.parent / "negatives.csv").write_text("patientId\nb\nd\n")
    args = ["score", "--submission", "sub.csv", "--ids", "negatives.csv"]
    (data.parent.parent / "sub.csv").write_text("patientId,PredictionString\nb,\nd,\n")
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "the 2 ids of negatives.csv (split subset), has no image with a box" in err
    assert cli.main(args + ["--no-positive-ok"]) == 0
    assert "not scored, no leaderboard row" in capsys.readouterr().out
    assert not leaderboard.read().shape[0]


def _flow_case(folder, val_ids, val_rows):
    """What kit/flow/submission.py leaves before its two `score` steps: a run folder with
    config.json, val_ids.csv, postprocess.json and val_submission.csv, and submissions/<run>.csv."""
    run = folder / "work" / "runs" / "tiny-1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"name": "tiny", "seed": 7, "image_size": 64}))
    (run / "postprocess.json").write_text('{"score_threshold": 0.5}')
    (run / "val_ids.csv").write_text("patientId\n" + "".join(f"{p}\n" for p in val_ids))
    (run / "val_submission.csv").write_text("patientId,PredictionString\n" + val_rows)
    subs = folder / "work" / "submissions"
    subs.mkdir()
    (subs / "tiny-1.csv").write_text("patientId,PredictionString\nt1,0.9 312 312 400 400\nt2,\n")
    return run, subs


def _flow_score(*argv):
    """One `score` step as kit.flow.submission._step runs it (the module's own parser)."""
    import argparse

    from kit.score import score

    parser = argparse.ArgumentParser()
    score.add_score_args(parser)
    return score.run_score(parser.parse_args([str(a) for a in argv]))


def test_the_whole_flows_two_score_steps_record_split_labels_and_run(data, capsys):
    data = Path("data/demo")      # relative, as the flow's are
    run, subs = _flow_case(Path("."), ["a", "b", "c"],
                           "a,0.9 0 0 100 100\nb,\nc,0.8 300 300 400 200\n")
    board = ("--leaderboard", subs / "leaderboard.csv")
    assert _flow_score("--submission", run / "val_submission.csv", "--labels",
                       data / "stage_2_train_labels.csv", *board) == 0
    assert _flow_score("--submission", subs / "tiny-1.csv", "--labels",
                       data / "demo_test_labels.csv", *board) == 0
    out = capsys.readouterr().out
    assert f"scored on the 3 ids of {run / 'val_ids.csv'} (split val; labels " in out
    assert "scored on all 2 images of data/demo/demo_test_labels.csv (split test)\n" in out
    rows = leaderboard.read(subs / "leaderboard.csv")
    config = hashlib.sha256(b'{"image_size":64,"name":"tiny","seed":7}').hexdigest()[:12]
    assert rows["split"].tolist() == ["val", "test"]
    assert rows["labels"].tolist() == ["data/demo/stage_2_train_labels.csv",
                                       "data/demo/demo_test_labels.csv"]
    assert rows["ids"].tolist() == [str(run / "val_ids.csv"), ""]
    assert rows["images"].tolist() == [3, 2] and rows["map"].tolist() == [pytest.approx(11 / 16), 1.0]
    for column, value in (("run", "tiny-1"), ("preset", "tiny"), ("seed", 7), ("config", config)):
        assert rows[column].tolist() == [value, value], column
    assert rows["postprocess"].tolist() == ['{"score_threshold": 0.5}'] * 2
    assert rows["commit"].str.fullmatch(r"([0-9a-f]{7,40}(-dirty)?)?").all()
    assert cli.main(["leaderboard", "--leaderboard", str(subs / "leaderboard.csv")]) == 0
    out = capsys.readouterr().out
    assert out.index("== test scores (held-out labels) against data/demo/demo_test_labels.csv") < \
        out.index("== val scores (each run's validation images, where tune chose the "
                  "post-processing: optimistic) against data/demo/stage_2_train_labels.csv ==")


def test_the_preflights_all_negative_val_set_passes_with_no_positive_ok(data, capsys):
    """The 2-image preflight's val set is its one negative image: the flow's val score step
    needs --no-positive-ok to go on (and writes no row)."""
    run, subs = _flow_case(Path("."), ["b"], "b,\n")
    argv = ["--submission", run / "val_submission.csv", "--labels",
            data / "stage_2_train_labels.csv", "--leaderboard", subs / "leaderboard.csv"]
    with pytest.raises(KitError, match="has no image with a box"):
        _flow_score(*argv)
    assert _flow_score(*argv, "--no-positive-ok") == 0
    assert not (subs / "leaderboard.csv").exists()


def test_score_refuses_a_leaderboard_that_is_not_one_and_leaves_it_alone(data, capsys):
    before = (data.parent.parent / "sub.csv").read_bytes()
    assert cli.main(["score", "--submission", "sub.csv", "--leaderboard", "sub.csv"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "not a leaderboard" in err
    assert (data.parent.parent / "sub.csv").read_bytes() == before


def test_score_raw_without_val_ids_scores_every_image_of_the_labels(data, capsys):
    (data.parent.parent / "raw.csv").write_text("patientId,score,x,y,w,h\na,0.9,0,0,100,100\n")
    assert cli.main(["score", "--submission", "raw.csv", "--raw", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    # a perfect, c (a box, no rows) 0, b and d excluded; a raw table's missing rows are expected
    assert (result["map"], result["images"], result["missing"]) == (0.5, 4, 3) and err == ""
    assert cli.main(["score", "--submission", "raw.csv", "--raw", "--strict"]) == 2
    assert "drop --strict" in capsys.readouterr().err
