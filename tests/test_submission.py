import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit import cli
from kit.errors import KitError
from kit.score.postprocess import PostProcess
from kit.runs import RAW_COLUMNS
from kit.score.submission import (format_prediction_string, read_submission, validate_submission,
                            write_submission)


def test_format_rounds_corners_and_drops_slivers():
    text = format_prediction_string([0.123456, 1.0, 0.5],
                                    [[10.04, 20.06, 100.0, 50.02], [1000.0, 0.0, 24.0, 1024.0],
                                     [5.0, 5.0, 0.01, 10.0]])
    assert text == "0.1235 10.0 20.1 100.0 50.0 1.0000 1000.0 0.0 24.0 1024.0"
    assert format_prediction_string([], np.zeros((0, 4))) == ""


def test_write_read_round_trip(tmp_path):
    preds = {"b": (np.array([0.9, 0.25]), np.array([[1, 2, 3, 4], [10, 20, 30, 40]], float))}
    write_submission(tmp_path / "s.csv", preds, ["a", "b"])
    assert (tmp_path / "s.csv").read_text().splitlines() == [
        "patientId,PredictionString", "a,", "b,0.9000 1.0 2.0 3.0 4.0 0.2500 10.0 20.0 30.0 40.0"]
    back = read_submission(tmp_path / "s.csv")
    assert list(back) == ["a", "b"] and back["a"][0].shape == (0,)
    assert back["b"][0].tolist() == [0.9, 0.25]
    assert back["b"][1].tolist() == [[1, 2, 3, 4], [10, 20, 30, 40]]


def test_read_submission_names_the_bad_row(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("patientId,PredictionString\na,0.5 1 2 3 4\nb,0.5 1 2 3\n")
    with pytest.raises(KitError, match=r"s.csv, row 3, field 'PredictionString': 4 numbers"):
        read_submission(path)
    path.write_text("id,PredictionString\na,\n")
    with pytest.raises(KitError, match="row 1: the header must be exactly"):
        read_submission(path)


def test_validate_reports_every_problem_with_its_row(tmp_path):
    (tmp_path / "sample.csv").write_text("patientId,PredictionString\n"
                                         + "".join(f"{p},0.5 0 0 100 100\n" for p in "abcd"))
    (tmp_path / "s.csv").write_text(
        "patientId,PredictionString\n"
        "a,1.5 0 0 10 10\n"             # row 2: confidence
        "b,0.5 1000 0 30 10\n"          # row 3: outside the image
        "b,\n"                          # row 4: duplicate
        "z,0.5 0 0 0 10\n"              # row 5: w = 0 and not in the sample
        "c,0.5 x 0 10 10\n")            # row 6: not a number; d missing
    problems = validate_submission(tmp_path / "s.csv", tmp_path / "sample.csv")
    text = "\n".join(problems)
    assert len(problems) == 7, text
    assert "row 2, field 'PredictionString': box 1 (1.5 0 0 10 10): confidence" in text
    assert "row 3, field 'PredictionString': box 1 (0.5 1000 0 30 10): box must lie inside" in text
    assert "row 4, field 'patientId': duplicate patientId 'b' (first at row 3)" in text
    assert "row 5, field 'PredictionString': box 1 (0.5 0 0 0 10): w and h must be > 0" in text
    assert "row 5, field 'patientId': patientId 'z' is not in the sample" in text
    assert "row 6, field 'PredictionString': holds something that is not a number" in text
    assert "field 'patientId': sample patientId 'd' has no row" in text


def test_validate_cli(in_tmp, capsys):
    (in_tmp / "sample.csv").write_text("patientId,PredictionString\na,0.5 0 0 100 100\n")
    (in_tmp / "good.csv").write_text("patientId,PredictionString\na,0.5 1 2 30 40\n")
    (in_tmp / "bad.csv").write_text("patientId,PredictionString\nb,\n")
    assert cli.main(["validate", "--submission", "good.csv", "--sample", "sample.csv"]) == 0
    assert "OK: 1 rows" in capsys.readouterr().out
    assert cli.main(["validate", "--submission", "bad.csv", "--sample", "sample.csv"]) == 2
    out = capsys.readouterr()
    assert "bad.csv, row 2, field 'patientId'" in out.out and "2 problem(s)" in out.err


def make_run(root, rows, post=PostProcess(0.5, 0.0, 1.0, 2)):
    run = root / "runs" / "r1"
    run.mkdir(parents=True)
    pd.DataFrame(rows, columns=RAW_COLUMNS).to_csv(run / "raw_test.csv", index=False)
    post.to_json(run / "postprocess.json")
    data = root / "data" / "demo"
    data.mkdir(parents=True)
    (data / "stage_2_sample_submission.csv").write_text(
        "patientId,PredictionString\nt1,0.5 0 0 100 100\nt2,0.5 0 0 100 100\n")
    return run


def test_submit_writes_validates_and_refuses_to_clobber(in_tmp, capsys, monkeypatch):
    make_run(in_tmp, [("t2", 0.9, 10, 10, 100, 100), ("t2", 0.2, 0, 0, 5, 5)])
    assert cli.main(["submit", "--run", "r1"]) == 0
    out = in_tmp / "submissions" / "r1.csv"
    assert out.read_text() == "patientId,PredictionString\nt1,\nt2,0.9000 10.0 10.0 100.0 100.0\n"
    assert cli.main(["submit", "--run", "r1"]) == 0           # identical: fine
    out.write_text("patientId,PredictionString\nt1,\nt2,\n")
    assert cli.main(["submit", "--run", "r1"]) == 2
    assert "exists and differs" in capsys.readouterr().err
    assert out.read_text().endswith("t2,\n")                  # untouched
    sent = []
    monkeypatch.setattr("kit.kaggle.api.submit", lambda path, message: sent.append((path, message)))
    assert cli.main(["submit", "--run", "r1", "--force", "--kaggle", "-m", "hello"]) == 0
    assert sent == [(Path("submissions/r1.csv"), "hello")] and "0.9000" in out.read_text()


def test_submit_applies_the_classifier_gate_with_the_runs_image_scores(in_tmp, capsys):
    run = make_run(in_tmp, [("t1", 0.8, 0, 0, 50, 50), ("t2", 0.9, 10, 10, 100, 100)],
                   post=PostProcess(0.5, 0.0, 1.0, 2, opacity_threshold=0.4))
    assert cli.main(["submit", "--run", "r1"]) == 2            # the gate needs the image scores
    assert "no image scores: rerun `python -m kit predict`" in capsys.readouterr().err
    assert not (in_tmp / "submissions").exists()
    (run / "raw_test_images.csv").write_text("patientId,p_opacity\nt1,0.39\nt2,0.4\n")
    assert cli.main(["submit", "--run", "r1"]) == 0
    assert (in_tmp / "submissions" / "r1.csv").read_text() == (
        "patientId,PredictionString\nt1,\nt2,0.9000 10.0 10.0 100.0 100.0\n")


def test_submit_rejects_ids_outside_the_sample(in_tmp, capsys):
    make_run(in_tmp, [("stranger", 0.9, 10, 10, 100, 100)])
    assert cli.main(["submit", "--run", "r1"]) == 2
    assert "not test images" in capsys.readouterr().err
    assert not (in_tmp / "submissions").exists()


def test_commands_do_not_import_tensorflow():
    code = ("import sys; from kit import cli; cli.build_parser('submit'); cli.build_parser('validate');"
            " import kit.score.submission, kit.score.postprocess, kit.data.labels; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
