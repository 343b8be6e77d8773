import numpy as np
import pandas as pd
import pytest

from kit.errors import KitError
from kit.postprocess import (PostProcess, nms_mask, rank_in_image, read_ids, read_raw,
                             scale_boxes)
from kit.runs import RAW_COLUMNS


def raw_table(rows):
    return pd.DataFrame(rows, columns=RAW_COLUMNS)


RAW = raw_table([
    ("a", 0.9, 100, 100, 200, 200),
    ("a", 0.4, 500, 500, 100, 100),
    ("a", 0.7, 110, 100, 200, 200),     # overlaps the first box (IoU 190/210)
    ("b", 0.3, 0, 0, 100, 100),         # image b's best score is 0.3
    ("c", 0.8, 0, 0, 10, 10),
])


def test_thresholds_gate_and_top_k():
    got = PostProcess(score_threshold=0.35, image_threshold=0.5, box_scale=1.0, max_boxes=2).apply(RAW)
    assert set(got) == {"a", "c"}                              # b fails the image gate
    scores, boxes = got["a"]
    assert scores.tolist() == [0.9, 0.7]                       # input order, 0.4 beyond top 2
    assert boxes.tolist() == [[100, 100, 200, 200], [110, 100, 200, 200]]


def test_nms_drops_the_overlapping_lower_box():
    post = PostProcess(score_threshold=0.0, image_threshold=0.0, box_scale=1.0, max_boxes=10,
                       nms_iou=0.5)
    assert post.apply(RAW)["a"][0].tolist() == [0.9, 0.4]


def test_box_scale_about_centre_and_clip():
    got = scale_boxes(np.array([[100, 200, 200, 100], [0, 0, 100, 100]], float), 0.5)
    assert got.tolist() == [[150, 225, 100, 50], [25, 25, 50, 50]]
    grown = scale_boxes(np.array([[1000, 0, 20, 20]], float), 2.0)      # clipped to 1024
    assert grown.tolist() == [[990, 0, 34, 30]]


def test_rank_in_image_ties_later_row_first():
    codes = np.array([0, 0, 1, 0, 1])
    scores = np.array([0.5, 0.9, 0.2, 0.5, 0.2])
    assert rank_in_image(codes, scores).tolist() == [2, 0, 1, 1, 0]


def test_nms_mask_per_image():
    codes = np.array([0, 0, 1])
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [1, 0, 10, 10]], float)
    assert nms_mask(codes, np.array([0.1, 0.9, 0.5]), boxes, 0.5).tolist() == [False, True, True]


def test_json_round_trip_and_validation(tmp_path):
    post = PostProcess(0.25, 0.5, 0.875, 3, nms_iou=0.3)
    post.to_json(tmp_path / "p.json")
    assert PostProcess.from_json(tmp_path / "p.json") == post
    with pytest.raises(KitError, match="box_scale"):
        PostProcess(0.2, 0.0, 0.0, 2)
    with pytest.raises(KitError, match="tune"):
        PostProcess.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"score_threshold": 0.2}')
    with pytest.raises(KitError, match="not a post-processing JSON"):
        PostProcess.from_json(tmp_path / "bad.json")


def test_read_raw_names_row_and_field(tmp_path):
    path = tmp_path / "raw.csv"
    RAW.to_csv(path, index=False)
    assert read_raw(path)["score"].tolist() == RAW["score"].tolist()
    bad = RAW.copy()
    bad.loc[2, "w"] = -5
    bad.to_csv(path, index=False)
    with pytest.raises(KitError, match=r"raw.csv, row 4, field 'w': w must be > 0"):
        read_raw(path)
    bad = RAW.copy().astype({"score": object})
    bad.loc[1, "score"] = "high"
    bad.to_csv(path, index=False)
    with pytest.raises(KitError, match=r"row 3, field 'score': not a number"):
        read_raw(path)
    RAW.drop(columns="h").to_csv(path, index=False)
    with pytest.raises(KitError, match=r"row 1, field 'h'"):
        read_raw(path)


def test_read_ids(tmp_path):
    (tmp_path / "ids.csv").write_text("patientId\nx\ny\n")
    assert read_ids(tmp_path / "ids.csv") == ["x", "y"]
    (tmp_path / "ids.csv").write_text("patientId\nx\nx\n")
    with pytest.raises(KitError, match="row 3"):
        read_ids(tmp_path / "ids.csv")
