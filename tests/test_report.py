"""kit.report.report: pictures, the results table (checked against kit.score.metric and by hand), report.md."""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit import paths
from kit.cli import main
from kit.config import RunConfig, Stage
from kit.errors import KitError
from kit.data.labels import boxes_by_patient, read_labels
from kit.score.metric import prf_table, score_dataset
from kit.score.postprocess import PostProcess
from kit.report.plots import history_figure, plot_detections, plot_history
from kit.report.report import (ValResults, load_val_results, pick_examples, results_table,
                        trained_layers, val_images, write_report)
from kit.runs import RAW_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOSSES = ["loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
          "mrcnn_mask_loss"]


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def history(epochs: int = 3) -> pd.DataFrame:
    d = {"epoch": list(range(1, epochs + 1))}       # 1-based, as kit.mrcnn.training writes it
    for i, name in enumerate(LOSSES):
        d[name] = [2.0 / (e + 1) + 0.1 * i for e in range(epochs)]
        d[f"val_{name}"] = [2.2 / (e + 1) + 0.1 * i for e in range(epochs)]
    return pd.DataFrame(d)


def shifted(box: np.ndarray) -> np.ndarray:
    """The box moved by w/5 towards the image centre: IoU with the original = 0.8/1.2 = 2/3."""
    x, y, w, h = box
    return np.array([x + w / 5 if x + w / 2 < 512 else x - w / 5, y, w, h])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A 16-image synthetic data set (64 px DICOMs) in Kaggle's layout; 4 positive images."""
    from kit.data.demo import make_dataset

    data = tmp_path_factory.mktemp("report") / "demo"
    make_dataset(data, n_train=16, n_test=1, size=64, seed=3)
    return data


@pytest.fixture
def study(demo, in_tmp) -> dict:
    """runs/ with r50 (a mixed result, history, tuning.png), r101 (perfect), r101b (no results).

    r50's detections, with its GT boxes per image: P1 all exact; P2 (one GT box) shifted to IoU
    2/3; P3 nothing; P4 all exact; N1 a false positive 0.8; N2 one 0.3; N3 one 0.1 that the
    post-processing (score >= 0.2) drops. Other negatives: nothing.
    """
    gt = boxes_by_patient(read_labels(demo / paths.TRAIN_LABELS))
    pos = sorted((pid for pid in gt if len(gt[pid])), key=lambda pid: (len(gt[pid]) != 1, pid))
    neg = [pid for pid in gt if not len(gt[pid])]
    assert len(pos) == 4 and len(gt[pos[0]]) == 1
    p2, p1, p3, p4 = pos
    val = [p1, p2, p3, p4] + neg[:6]
    n1, n2, n3 = neg[:3]
    post = PostProcess(score_threshold=0.2, image_threshold=0.0, box_scale=1.0, max_boxes=4)

    def rows(pid, boxes, score):
        return [[pid, score, *b] for b in np.asarray(boxes).reshape(-1, 4)]

    r50 = (rows(p1, gt[p1], 0.9) + rows(p2, shifted(gt[p2][0]), 0.7) + rows(p4, gt[p4], 0.95)
           + rows(n1, [100, 100, 200, 200], 0.8) + rows(n2, [500, 300, 150, 250], 0.3)
           + rows(n3, [300, 300, 100, 100], 0.1))
    r101 = sum((rows(pid, gt[pid], 0.9) for pid in (p1, p2, p3, p4)), [])
    configs = {
        "r50": RunConfig(name="r50", backbone="resnet50", image_size=64,
                         stages=(Stage("heads", 2),), data_dir=str(demo)),
        "r101": RunConfig(name="r101", backbone="resnet101", image_size=64,
                          stages=(Stage("heads", 1), Stage("4+", 1, 1.0, True),
                                  Stage("all", 1, 0.1, True)), data_dir=str(demo)),
        "r101b": RunConfig(name="r101b", backbone="resnet101", image_size=64, data_dir=str(demo)),
    }
    for name, cfg in configs.items():
        run = Path("runs") / name
        run.mkdir(parents=True)
        cfg.save(run / "config.json")
    for name, raw in (("r50", r50), ("r101", r101)):
        run = Path("runs") / name
        pd.DataFrame(raw, columns=RAW_COLUMNS).to_csv(run / "raw_val.csv", index=False)
        pd.DataFrame({"patientId": val}).to_csv(run / "val_ids.csv", index=False)
        post.to_json(run / "postprocess.json")
    history().to_csv("runs/r50/history.csv", index=False)
    import matplotlib.pyplot as plt

    from kit.io import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.1, 0.2])
    save_figure(Path("runs/r50/tuning.png"), fig)
    return {"gt": gt, "val": val, "pos": (p1, p2, p3, p4), "neg": (n1, n2, n3), "post": post}


def test_plot_history_writes_png_and_refuses_empty(tmp_path):
    plot_history(history(), tmp_path / "curves.png")
    assert is_png(tmp_path / "curves.png")
    with pytest.raises(KitError, match="no epochs"):
        plot_history(history(0), tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_history_figure_epochs_from_one_log_losses_and_val_map_with_best_epoch():
    import matplotlib.pyplot as plt

    n = 12
    df = pd.DataFrame({"epoch": range(1, n + 1),
                       "loss": [3.0 / e for e in range(1, n + 1)],
                       "val_loss": [300.0] + [4.0 / e for e in range(2, n + 1)],   # first spike
                       "mrcnn_mask_loss": [0.0] + [0.5] * (n - 1),                # a zero: linear
                       "val_map": [0.05, np.nan, 0.1, 0.12, 0.15, 0.2, 0.22, 0.2, 0.26, 0.25,
                                   0.24, 0.25]})
    fig = history_figure(df)
    val_map, loss, mask = fig.axes[:3]
    assert val_map.get_title() == "validation mAP@[0.40:0.75]"
    assert loss.get_title() == "total loss" and mask.get_title() == "mrcnn_mask_loss"
    train, val = loss.get_lines()[:2]
    assert train.get_xdata().tolist() == list(range(1, 13))          # epochs 1..12, not 2..13
    assert val.get_ydata()[0] == 300.0 and loss.get_yscale() == "log"
    assert mask.get_yscale() == "linear"
    drawn = val_map.get_lines()[0]
    assert drawn.get_xdata().tolist() == [1] + list(range(3, 13))    # the NaN epoch is skipped
    star = val_map.collections[0].get_offsets()
    assert star.tolist() == [[9, 0.26]]                              # best epoch marked
    assert "best: epoch 9, 0.2600" in [t.get_text() for t in val_map.get_legend().get_texts()]
    for ax in (val_map, loss, mask):                                 # dotted line at the best
        assert [9, 9] in [list(line.get_xdata()) for line in ax.get_lines()]
    plt.close(fig)
    no_epoch = history_figure(df.drop(columns=["epoch", "val_map"]))
    assert no_epoch.axes[0].get_lines()[0].get_xdata().tolist() == list(range(1, 13))
    assert no_epoch.axes[0].get_title() == "total loss"
    plt.close(no_epoch)


def test_plot_detections_writes_png_and_checks_lengths(tmp_path):
    images = [np.full((64, 64), 60 * i, np.uint8) for i in range(3)]
    gt = [np.array([[100.0, 200.0, 300.0, 400.0]]), np.zeros((0, 4)), np.zeros((0, 4))]
    preds = [(np.array([0.9]), np.array([[120.0, 210.0, 280.0, 380.0]])),
             (np.array([0.4]), np.array([[500.0, 500.0, 100.0, 100.0]])),
             (np.zeros(0), np.zeros((0, 4)))]
    plot_detections(images, gt, preds, ["a", "b", "c"], tmp_path / "det.png", ncols=2)
    assert is_png(tmp_path / "det.png")
    with pytest.raises(ValueError):
        plot_detections(images, gt[:2], preds, ["a", "b", "c"], tmp_path / "bad.png")


def test_trained_layers_joins_stages_and_collapses_repeats():
    cfg = RunConfig(name="x", stages=(Stage("heads", 1), Stage("4+", 1), Stage("all", 1),
                                      Stage("all", 1, 0.1, True)))
    assert trained_layers(cfg) == "heads > 4+ > all"
    assert trained_layers(RunConfig(name="y", stages=(Stage("heads", 3),))) == "heads"


def test_results_table_rows_columns_and_numbers(study):
    table = results_table(sorted(Path("runs").iterdir()))
    assert table["run"].tolist() == ["r101", "r50"]          # r101b has no results: no row
    assert list(table.columns) == [
        "run", "backbone", "layers", "augmentation", "images",
        "P@0.25", "R@0.25", "F1@0.25", "P@0.5", "R@0.5", "F1@0.5",
        "P@0.75", "R@0.75", "F1@0.75", "mAP"]
    r101, r50 = (table.iloc[i] for i in range(2))
    assert (r101.backbone, r101.layers, r101.augmentation) == ("resnet101", "heads > 4+ > all", "yes")
    assert (r50.backbone, r50.layers, r50.augmentation) == ("resnet50", "heads", "no")
    assert r50.images == r101.images == len(study["val"])
    # r101 is perfect: every metric 1
    assert np.allclose(r101.iloc[5:].astype(float), 1.0)
    # r50 by hand: TP at 0.25/0.5 = P1 + P2 + P4 boxes, at 0.75 P2's box misses (IoU 2/3)
    gt, (p1, p2, p3, p4) = study["gt"], study["pos"]
    n_gt = sum(len(gt[pid]) for pid in study["val"])
    exact = len(gt[p1]) + len(gt[p4])
    n_pred = exact + 1 + 2                                     # + P2's box + 2 false positives
    for t, tp in ((0.25, exact + 1), (0.5, exact + 1), (0.75, exact)):
        p, r = tp / n_pred, tp / n_gt
        assert r50[f"P@{t:g}"] == pytest.approx(p)
        assert r50[f"R@{t:g}"] == pytest.approx(r)
        assert r50[f"F1@{t:g}"] == pytest.approx(2 * p * r / (p + r))
    # images scored: P1 1, P2 6/8 (hits up to t=0.65), P3 0, P4 1, N1 0, N2 0; rest excluded
    assert r50.mAP == pytest.approx((1 + 0.75 + 0 + 1 + 0 + 0) / 6)


def test_results_table_equals_metric_on_postprocessed_raw(study):
    raw = pd.read_csv("runs/r50/raw_val.csv", dtype={"patientId": str})
    preds = study["post"].apply(raw)
    gt = {pid: study["gt"][pid] for pid in study["val"]}
    direct = prf_table(gt, preds)
    row = results_table([Path("runs/r50")]).iloc[0]
    for t, counts in direct.items():
        assert row[f"P@{t:g}"] == counts["precision"]
        assert row[f"R@{t:g}"] == counts["recall"]
        assert row[f"F1@{t:g}"] == counts["f1"]
    assert row["mAP"] == score_dataset(gt, preds).map


def test_pick_examples_positives_first_then_confident_negatives():
    e = (np.zeros(0), np.zeros((0, 4)))
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    ids = ["p1", "n1", "n2", "p2", "n3", "n4"]
    gt = {pid: (box if pid.startswith("p") else np.zeros((0, 4))) for pid in ids}
    preds = {"p1": e, "p2": e, "n1": (np.array([0.2]), box), "n2": e,
             "n3": (np.array([0.1, 0.9]), np.vstack([box, box])), "n4": (np.array([0.5]), box)}
    res = ValResults(RunConfig(name="x"), ids, gt, preds)
    assert pick_examples(res, n=5, n_pos=1) == ["p1", "n3", "n4", "n1", "n2"]
    assert pick_examples(res, n=4, n_pos=2) == ["p1", "p2", "n3", "n4"]
    assert pick_examples(res, n=10, n_pos=1) == ["p1", "p2", "n3", "n4", "n1", "n2"]


def test_val_images_same_from_cache_and_from_dicom(study, demo):
    from kit.data.prepare import prepare

    res = load_val_results(Path("runs/r50"))
    ids = res.ids[:3]
    decoded = val_images(res.config, ids)
    prepare(demo, 64, splits=("train",), workers=1)
    cached = val_images(res.config, ids)
    assert all(a.shape == (64, 64) and a.dtype == np.uint8 for a in decoded)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, cached))


def test_write_report_pictures_and_markdown(study):
    out = write_report(Path("runs/r50"))
    assert out == Path("runs/r50/report.md")
    text = out.read_text()
    for name in ("curves.png", "results.png", "detections.png", "tuning.png"):
        assert is_png(Path("runs/r50") / name), name
        assert f"]({name})" in text, name
    assert "| r101 | resnet101 | heads > 4+ > all | yes |" in text
    assert "| r50 | resnet50 | heads | no |" in text
    assert "could not be made" not in text
    # no raw_val_images.csv (a run from before the image classifier): no classifier section
    assert "Image classifier" not in text and not Path("runs/r50/roc.png").exists()


def test_write_report_lists_missing_pictures(study):
    text = write_report(Path("runs/r101")).read_text()
    assert "- curves.png: history.csv is missing" in text
    assert "- tuning.png: tuning.png is missing" in text
    assert "](curves.png)" not in text and not Path("runs/r101/curves.png").exists()
    assert is_png(Path("runs/r101/detections.png")) and "](detections.png)" in text
    bare = write_report(Path("runs/r101b")).read_text()
    assert "- detections.png: raw_val.csv, postprocess.json, val_ids.csv missing" in bare
    assert "](results.png)" in bare                  # the other runs' results are still shown


def test_report_command_prints_path_and_table(study, capsys):
    assert main(["report", "--run", "r50", "--runs-dir", "runs"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(Path("runs/r50/report.md"))
    assert any(line.split()[:1] == ["r101"] for line in printed)
    assert any(line.split()[:1] == ["r50"] for line in printed)


def test_report_command_bad_raw_row_is_one_line_error(study, capsys):
    raw = pd.read_csv("runs/r50/raw_val.csv", dtype={"patientId": str})
    raw.loc[1, "patientId"] = "not-a-val-image"
    raw.to_csv("runs/r50/raw_val.csv", index=False)
    assert main(["report", "--run", "r50", "--runs-dir", "runs"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "raw_val.csv, row 3, field 'patientId'" in err
    assert not Path("runs/r50/report.md").exists()


def test_unreadable_inputs_become_listed_reasons(study, demo, tmp_path):
    labels_only = tmp_path / "labels-only"
    labels_only.mkdir()
    (labels_only / paths.TRAIN_LABELS).write_bytes((demo / paths.TRAIN_LABELS).read_bytes())
    cfg = RunConfig.load("runs/r101/config.json")
    RunConfig.from_dict({**cfg.to_dict(), "data_dir": str(labels_only)}).save("runs/r101/config.json")
    Path("runs/r101/history.csv").write_text("")
    text = write_report(Path("runs/r101")).read_text()
    assert "- detections.png: " in text and "DICOM file not found" in text
    assert "- curves.png: " in text and "history.csv: not a readable CSV" in text
    assert "| r101 | resnet101 |" in text               # the table does not need the images


def write_image_scores(run: Path, scores: dict) -> None:
    pd.DataFrame({"patientId": list(scores), "p_opacity": list(scores.values())}).to_csv(
        run / "raw_val_images.csv", index=False)


def test_report_shows_the_classifier_auc_and_gates_with_it(study):
    (p1, p2, p3, p4), neg = study["pos"], [pid for pid in study["val"] if pid not in study["pos"]]
    run = Path("runs/r50")
    # positives 0.9, 0.6, 0.3, 0.3; negatives 0.3 0.2 0.1 0.1 0.05 0.6. Negatives below (ties
    # one half): p1 6, p2 5 + 1/2, p3 4 + 1/2, p4 4 + 1/2 -> AUC 20.5 / 24
    write_image_scores(run, {p1: 0.9, p2: 0.6, p3: 0.3, p4: 0.3,
                             **dict(zip(neg, [0.3, 0.2, 0.1, 0.1, 0.05, 0.6]))})
    text = write_report(run).read_text()
    assert f"ROC AUC **{20.5 / 24:.4f}** on 10 validation images (4 with a box, 6 without)" in text
    raw = pd.read_csv(run / "raw_val.csv", dtype={"patientId": str})
    best = raw.groupby("patientId").score.max()
    pos = [best.get(pid, 0.0) for pid in study["pos"]]
    negs = [best.get(pid, 0.0) for pid in neg]
    want = sum((a > b) + 0.5 * (a == b) for a in pos for b in negs) / (len(pos) * len(negs))
    assert f"ranks the same images with ROC AUC {want:.4f}" in text       # plain pairwise count
    assert "refitted" not in text                 # no train_state.json: no refit sentence
    (run / "train_state.json").write_text(json.dumps({"image_head_refit": {
        "images": 12, "checkpoint": "best.h5", "loss_before": 0.9, "loss_after": 0.4,
        "train_accuracy": 0.85, "steps": 200, "seconds": 3.0}}))
    assert ("refitted after training on 12 training images and their flips (best.h5: loss "
            "0.900 -> 0.400, training accuracy 0.850)") in write_report(run).read_text()
    assert "](roc.png)" in text and is_png(run / "roc.png") and "could not be made" not in text
    # the classifier gate of postprocess.json uses the run's image scores: at 0.5, P3, P4 and
    # every negative lose their boxes: P1 1, P2 6/8, P3 0, P4 0; negatives excluded
    gated = PostProcess(score_threshold=0.2, image_threshold=0.0, box_scale=1.0,
                               max_boxes=4, opacity_threshold=0.5)
    gated.to_json(run / "postprocess.json")
    row = results_table([run]).iloc[0]
    assert row["mAP"] == pytest.approx((1 + 0.75 + 0 + 0) / 4)


def test_report_names_validation_images_missing_from_the_image_scores(study):
    run = Path("runs/r50")
    write_image_scores(run, {pid: 0.5 for pid in study["val"][1:]})
    text = write_report(run).read_text()
    assert "- roc.png: " in text and "1 validation images have no p_opacity" in text
    assert "](roc.png)" not in text and "| r50 | resnet50 |" in text
