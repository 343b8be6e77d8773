import numpy as np
import pandas as pd
import pytest

from kit.errors import KitError
from kit.score.postprocess import PostProcess, nms_mask, rank_in_image, scale_boxes
from kit.runs import image_scores_beside, read_ids, read_image_scores, read_raw
from kit.runs import RAW_COLUMNS, image_scores_path


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


def test_classifier_gate_drops_whole_images_below_the_threshold():
    post = PostProcess(score_threshold=0.0, image_threshold=0.0, box_scale=1.0, max_boxes=10,
                       opacity_threshold=0.5)
    got = post.apply(RAW, {"a": 0.5, "b": 0.9, "c": 0.49, "unused": 0.0})
    assert set(got) == {"a", "b"}                             # p >= threshold keeps (a: equal)
    assert got["a"][0].tolist() == [0.9, 0.4, 0.7]
    both = PostProcess(0.0, 0.5, 1.0, 10, opacity_threshold=0.5)
    both = both.apply(RAW, {"a": 1, "b": 1, "c": 0})
    assert set(both) == {"a"}                                 # b: box-score gate, c: classifier


def test_classifier_gate_needs_the_image_scores():
    post = PostProcess(0.0, 0.0, 1.0, 10, opacity_threshold=0.3)
    with pytest.raises(KitError, match="opacity_threshold 0.3 .* no image scores: rerun "
                                       "`python -m kit predict`"):
        post.apply(RAW)
    with pytest.raises(KitError, match=r"1 images with detections have no p_opacity .*'c'"):
        post.apply(RAW, {"a": 0.5, "b": 0.5})
    off = PostProcess(0.0, 0.0, 1.0, 10)                        # gate off: scores not needed
    assert set(off.apply(RAW)) == set(off.apply(RAW, {})) == {"a", "b", "c"}


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
    post = PostProcess(0.25, 0.5, 0.875, 3, nms_iou=0.3, opacity_threshold=0.15)
    post.to_json(tmp_path / "p.json")
    assert PostProcess.from_json(tmp_path / "p.json") == post
    # a file written before the classifier gate existed loads with the gate off
    (tmp_path / "old.json").write_text('{"box_scale": 0.875, "image_threshold": 0.5, '
                                       '"max_boxes": 3, "nms_iou": null, "score_threshold": 0.25}')
    assert PostProcess.from_json(tmp_path / "old.json").opacity_threshold == 0.0
    with pytest.raises(KitError, match="opacity_threshold must be in"):
        PostProcess(0.2, 0.0, 1.0, 2, opacity_threshold=1.5)
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


def test_read_image_scores_names_row_and_field(tmp_path):
    path = tmp_path / "raw_val_images.csv"
    path.write_text("patientId,p_opacity\na,0.25\nb,1\nc,0\n")
    assert read_image_scores(path) == {"a": 0.25, "b": 1.0, "c": 0.0}
    for body, where in [("a,0.2\nb,1.5\n", r"row 3, field 'p_opacity': p_opacity must be in \["),
                        ("a,0.2\nb,high\n", r"row 3, field 'p_opacity': not a number"),
                        ("a,0.2\nb,\n", r"row 3, field 'p_opacity': not a number"),
                        ("a,0.2\na,0.3\n", r"row 3, field 'patientId': duplicate patientId"),
                        (" ,0.2\n", r"row 2, field 'patientId': empty patientId")]:
        path.write_text("patientId,p_opacity\n" + body)
        with pytest.raises(KitError, match=where):
            read_image_scores(path)
    path.write_text("patientId,score\na,0.2\n")
    with pytest.raises(KitError, match=r"row 1, field 'p_opacity'"):
        read_image_scores(path)
    with pytest.raises(KitError, match="run `python -m kit predict`"):
        read_image_scores(tmp_path / "missing.csv")


def test_image_scores_beside_the_raw_table(tmp_path):
    raw = tmp_path / "raw_val.csv"
    assert image_scores_beside(raw) is None                   # runs from before the classifier
    image_scores_path(tmp_path, "val").write_text("patientId,p_opacity\nx,0.5\n")
    assert image_scores_beside(raw) == {"x": 0.5}
