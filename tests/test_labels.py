import json

import numpy as np
import pytest

from kit import cli
from kit.data import labels
from kit.errors import KitError

HEADER = "patientId,x,y,width,height,Target\n"
GOOD = HEADER + "a,,,,,0\nb,10.0,20.0,100.0,200.0,1\nb,500.0,600.0,50.0,60.0,1\nc,,,,,0\n"


def write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_labels_types_and_order(tmp_path):
    df = labels.read_labels(write(tmp_path, GOOD))
    assert list(df.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    assert list(df["patientId"]) == ["a", "b", "b", "c"]
    assert df["x"].dtype == np.float64 and np.isnan(df.loc[0, "x"])
    assert df["Target"].tolist() == [0, 1, 1, 0]


def test_boxes_by_patient_format(tmp_path):
    boxes = labels.boxes_by_patient(labels.read_labels(write(tmp_path, GOOD)))
    assert list(boxes) == ["a", "b", "c"]
    assert boxes["a"].shape == (0, 4) and boxes["a"].dtype == np.float64
    np.testing.assert_array_equal(boxes["b"], [[10, 20, 100, 200], [500, 600, 50, 60]])


@pytest.mark.parametrize("body, row, field", [
    ("a,,,,,0\nb,x1,20,100,200,1\n", 3, "x"),                      # not a number
    ("a,,,,,0\nb,10,20,0,200,1\n", 3, "width"),                     # width > 0
    ("a,,,,,0\nb,10,20,100,-5,1\n", 3, "height"),                   # height > 0
    ("a,,,,,2\n", 2, "Target"),                                     # Target in {0,1}
    ("a,,,,,0\nb,10,20,100,,1\n", 3, "height"),                     # Target 1 needs a box
    ("a,10,20,100,200,0\n", 2, "x"),                                # Target 0 has no box
    ("a,-1,20,100,200,1\n", 2, "x"),                                # x >= 0
    ("a,10,-2,100,200,1\n", 2, "y"),                                # y >= 0
    ("a,,,,,0\nb,1000,20,25,200,1\n", 3, "width"),                  # x + w <= 1024
    ("a,10,900,20,125,1\n", 2, "height"),                           # y + h <= 1024
    ("a,10,20,100,200,1\nc,,,,,0\na,,,,,0\n", 4, "patientId"),      # negative and positive
    (",,,,,0\n", 2, "patientId"),                                   # empty id
])
def test_bad_row_is_one_line_error(tmp_path, capsys, body, row, field):
    path = write(tmp_path, HEADER + body)
    assert cli.main(["labels", "--data", str(tmp_path), "--labels", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err
    assert f"{path}, row {row}, field {field!r}:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]   # nothing written


def test_missing_column_and_missing_file(tmp_path):
    with pytest.raises(KitError, match="row 1, field 'Target'"):
        labels.read_labels(write(tmp_path, "patientId,x,y,width,height\na,,,,\n"))
    with pytest.raises(KitError, match="make data.*make demo-data"):
        labels.read_labels(tmp_path / "nope.csv")


def test_class_info_and_sample_submission(tmp_path):
    classes = labels.read_class_info(write(tmp_path, "patientId,class\na,Normal\nb,Lung Opacity\n"
                                                     "b,Lung Opacity\n", "c.csv"))
    assert len(classes) == 3                                        # duplicates kept
    with pytest.raises(KitError, match="row 3, field 'class'"):
        labels.read_class_info(write(tmp_path, "patientId,class\na,Normal\nb,Sick\n", "c.csv"))
    sub = labels.read_sample_submission(write(tmp_path, "patientId,PredictionString\n"
                                                        "t1,0.5 0 0 100 100\nt2,\n", "s.csv"))
    assert sub["PredictionString"].tolist() == ["0.5 0 0 100 100", ""]
    with pytest.raises(KitError, match="row 2, field 'PredictionString'"):
        labels.read_sample_submission(write(tmp_path, "patientId,PredictionString\nt1,0.5 0 0\n", "s.csv"))
    with pytest.raises(KitError, match="row 3, field 'patientId'"):
        labels.read_sample_submission(write(tmp_path, "patientId,PredictionString\nt1,\nt1,\n", "s.csv"))


def test_summarize_counts_classes_per_image(tmp_path):
    df = labels.read_labels(write(tmp_path, GOOD))
    classes = labels.read_class_info(write(tmp_path, "patientId,class\na,Normal\nb,Lung Opacity\n"
                                                     "b,Lung Opacity\nc,Normal\n", "c.csv"))
    assert labels.summarize(df, classes) == {
        "images": 3, "positive_images": 1, "boxes": 2,
        "boxes_per_image": {"0": 2, "2": 1},
        "classes": {"Normal": 2, "Lung Opacity": 1},
    }


def test_cli_json_shape(tmp_path, capsys):
    write(tmp_path, GOOD, "stage_2_train_labels.csv")
    assert cli.main(["labels", "--data", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"images": 3, "positive_images": 1, "boxes": 2, "boxes_per_image": {"0": 2, "2": 1}}
    assert cli.main(["labels", "--data", str(tmp_path)]) == 0
    assert "positive images" in capsys.readouterr().out


def test_real_labels_counts(real_rsna, capsys):
    assert cli.main(["labels", "--data", str(real_rsna), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["images"], out["positive_images"], out["boxes"]) == (26684, 6012, 9555)
    assert out["boxes_per_image"] == {"0": 20672, "1": 2614, "2": 3266, "3": 119, "4": 13}
    assert out["classes"] == {"No Lung Opacity / Not Normal": 11821, "Normal": 8851,
                              "Lung Opacity": 6012}
    assert out["test_images"] == 3000


def test_labels_alone_finds_class_and_sample_files_beside_it(real_rsna, tmp_path, monkeypatch,
                                                            capsys):
    """`--labels FILE` without --data reads the class/sample files next to FILE, not data/."""
    monkeypatch.chdir(tmp_path)     # no data/ folder here to fall back on
    assert cli.main(["labels", "--labels", str(real_rsna / "stage_2_train_labels.csv"),
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_images"] == 3000
    assert out["classes"]["Lung Opacity"] == 6012
