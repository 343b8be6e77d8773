import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit import cli, paths
from kit.config import RunConfig, get_preset
from kit.infer.fusion import fuse_raw
from kit.data.labels import boxes_by_patient, read_labels
from kit.score.metric import score_dataset
from kit.score.postprocess import PostProcess
from kit.runs import read_image_scores, read_raw
from kit.runs import IMAGE_COLUMNS, RAW_COLUMNS
from kit.score.submission import read_submission
from kit.data.demo import make_dataset
from conftest import run_cli_without_tensorflow

SMALL_GRID = ["--thresholds", "0.1", "0.5", "0.8", "--scales", "1.0", "0.9",
              "--max-boxes", "1", "3", "--image-thresholds", "0.0", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ens") / "data"
    make_dataset(out, n_train=12, n_test=4, size=64, seed=1)
    return out


def ground_truth(data: Path) -> tuple[dict, dict]:
    """(train, test) patientId -> (k, 4) xywh boxes of the synthetic set."""
    return (boxes_by_patient(read_labels(data / paths.TRAIN_LABELS)),
            boxes_by_patient(read_labels(data / paths.DEMO_TEST_LABELS)))


def fake_raw(gt: dict, ids: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """A model's raw detections: each GT box jittered (score 0.6-0.95) and, on about half the
    images, a false positive (score 0.05-0.4)."""
    rows = []
    for pid in ids:
        for x, y, w, h in gt[pid]:
            dx, dy = rng.normal(0, 8, 2)
            rows.append((pid, rng.uniform(0.6, 0.95), x + dx, y + dy, w * rng.uniform(0.9, 1.1),
                         h * rng.uniform(0.9, 1.1)))
        if rng.random() < 0.5:
            rows.append((pid, rng.uniform(0.05, 0.4), 100.0, 600.0, 150.0, 200.0))
    raw = pd.DataFrame(rows, columns=RAW_COLUMNS)
    raw[["x", "y"]] = raw[["x", "y"]].clip(lower=0.0)
    return raw.round({"score": 5, "x": 1, "y": 1, "w": 1, "h": 1})


def fake_images(gt: dict, ids: list[str], rng: np.random.Generator) -> pd.DataFrame:
    p = [float(np.clip((0.8 if len(gt[pid]) else 0.2) + rng.normal(0, 0.1), 0, 1)) for pid in ids]
    return pd.DataFrame({"patientId": ids, "p_opacity": p}, columns=IMAGE_COLUMNS)


def make_run(runs: Path, name: str, data: Path, val_ids: list[str], seed: int,
             images: bool = True) -> Path:
    """A run folder as train + predict leave it (no checkpoints: nothing here needs them)."""
    train_gt, test_gt = ground_truth(data)
    rng = np.random.default_rng(seed)
    run = runs / name
    run.mkdir(parents=True)
    dataclasses.replace(get_preset("tiny"), name=name, data_dir=str(data), seed=seed).save(
        run / "config.json")
    pd.DataFrame({"patientId": val_ids}).to_csv(run / "val_ids.csv", index=False)
    fake_raw(train_gt, val_ids, rng).to_csv(run / "raw_val.csv", index=False)
    fake_raw(test_gt, list(test_gt), rng).to_csv(run / "raw_test.csv", index=False)
    if images:
        fake_images(train_gt, val_ids, rng).to_csv(run / "raw_val_images.csv", index=False)
        fake_images(test_gt, list(test_gt), rng).to_csv(run / "raw_test_images.csv", index=False)
    return run


def train_ids(data: Path) -> list[str]:
    return list(ground_truth(data)[0])


def ensemble(runs_dir: Path, members: list[Path], *extra: str) -> int:
    return cli.main(["ensemble", "--runs", *map(str, members), "--name", "ens",
                     "--runs-dir", str(runs_dir), *extra])


def downstream(ens: Path, data: Path, tmp: Path, capsys) -> dict:
    """tune, submit, score (raw val and the submission) and their outputs on the ensemble."""
    assert cli.main(["tune", "--run", str(ens), *SMALL_GRID]) == 0
    post = PostProcess.from_json(ens / "postprocess.json")
    sub = tmp / "sub.csv"
    assert cli.main(["submit", "--run", ens.name, "--runs-dir", str(ens.parent),
                     "--out", str(sub)]) == 0
    # submit used the fused test table (and the averaged image scores)
    want = post.apply(read_raw(ens / "raw_test.csv"),
                      read_image_scores(ens / "raw_test_images.csv"))
    got = read_submission(sub)
    assert set(got) == set(ground_truth(data)[1])
    for pid, (scores, boxes) in got.items():
        s, b = want.get(pid, (np.zeros(0), np.zeros((0, 4))))
        np.testing.assert_allclose(scores, s, atol=5e-5)
        np.testing.assert_allclose(boxes, b, atol=0.06)
    capsys.readouterr()
    assert cli.main(["score", "--submission", str(ens / "raw_val.csv"), "--raw", "--json",
                     "--labels", str(data / paths.TRAIN_LABELS)]) == 0
    val_score = json.loads(capsys.readouterr().out)
    # score read the ensemble's raw_val.csv and its val_ids.csv
    train_gt = ground_truth(data)[0]
    raw = read_raw(ens / "raw_val.csv")
    preds = {pid: (g["score"].to_numpy(), g[["x", "y", "w", "h"]].to_numpy())
             for pid, g in raw.groupby("patientId", sort=False)}
    val_ids = pd.read_csv(ens / "val_ids.csv")["patientId"].tolist()
    want = score_dataset({pid: train_gt[pid] for pid in val_ids}, preds)
    assert val_score["images"] == len(val_ids) and val_score["map"] == pytest.approx(want.map)
    assert cli.main(["score", "--submission", str(sub), "--data", str(data), "--json",
                     "--no-leaderboard"]) == 0
    return {"val": val_score, "test": json.loads(capsys.readouterr().out)}


def test_folds_concatenate_val_and_fuse_test(tmp_path, data, capsys):
    runs = tmp_path / "runs"
    ids = train_ids(data)
    a = make_run(runs, "fold0", data, ids[:6], seed=1)
    b = make_run(runs, "fold1", data, ids[6:], seed=2)
    assert ensemble(runs, [a, "fold1"]) == 0
    ens = runs / "ens"
    info = json.loads((ens / "ensemble.json").read_text())
    assert info["mode"] == "folds" and info["members"] == [str(a), str(b)]
    assert info["weights"] == [1.0, 1.0] and info["iou_thr"] == 0.55 and info["created"]
    cfg = RunConfig.load(ens / "config.json")
    assert cfg.name == "ens" and cfg.data_dir == str(data) and cfg.image_size == 64
    assert pd.read_csv(ens / "val_ids.csv")["patientId"].tolist() == ids
    pd.testing.assert_frame_equal(read_raw(ens / "raw_val.csv"), pd.concat(
        [read_raw(a / "raw_val.csv"), read_raw(b / "raw_val.csv")], ignore_index=True))
    fused = fuse_raw([read_raw(a / "raw_test.csv"), read_raw(b / "raw_test.csv")])
    got = read_raw(ens / "raw_test.csv")
    assert got["patientId"].tolist() == fused["patientId"].tolist()
    np.testing.assert_allclose(got[RAW_COLUMNS[1:]].to_numpy(float),
                               fused[RAW_COLUMNS[1:]].to_numpy(float), atol=0.05)
    images = {s: [read_image_scores(r / f"raw_{s}_images.csv") for r in (a, b)]
              for s in ("val", "test")}
    assert read_image_scores(ens / "raw_val_images.csv") == {**images["val"][0], **images["val"][1]}
    mean = read_image_scores(ens / "raw_test_images.csv")
    assert mean.keys() == images["test"][0].keys()
    for pid, p in mean.items():
        assert p == pytest.approx((images["test"][0][pid] + images["test"][1][pid]) / 2, abs=1e-12)
    scores = downstream(ens, data, tmp_path, capsys)
    assert scores["val"]["classifier"]["images"] == 12
    assert cli.main(["report", "--run", "ens", "--runs-dir", str(runs)]) == 0
    assert "ens" in (ens / "report.md").read_text()


def test_shared_val_fuses_val_with_weights(tmp_path, data, capsys):
    runs = tmp_path / "runs"
    ids = train_ids(data)
    a = make_run(runs, "seed1", data, ids, seed=1)
    b = make_run(runs, "seed2", data, ids, seed=2)
    assert ensemble(runs, [a, b], "--weights", "2", "1", "--iou-thr", "0.5") == 0
    ens = runs / "ens"
    info = json.loads((ens / "ensemble.json").read_text())
    assert info["mode"] == "shared-val" and info["weights"] == [2.0, 1.0] and info["iou_thr"] == 0.5
    assert pd.read_csv(ens / "val_ids.csv")["patientId"].tolist() == ids
    for split in ("val", "test"):
        fused = fuse_raw([read_raw(a / f"raw_{split}.csv"), read_raw(b / f"raw_{split}.csv")],
                         weights=[2, 1], iou_thr=0.5)
        got = read_raw(ens / f"raw_{split}.csv")
        assert len(got) == len(fused) < len(read_raw(a / f"raw_{split}.csv")) * 2
        np.testing.assert_allclose(got[RAW_COLUMNS[1:]].to_numpy(float),
                                   fused[RAW_COLUMNS[1:]].to_numpy(float), atol=0.05)
        pa, pb = (read_image_scores(r / f"raw_{split}_images.csv") for r in (a, b))
        mean = read_image_scores(ens / f"raw_{split}_images.csv")
        assert mean == pytest.approx({pid: (2 * pa[pid] + pb[pid]) / 3 for pid in pa}, abs=1e-12)
    scores = downstream(ens, data, tmp_path, capsys)
    assert scores["test"]["images"] == 4


def test_image_scores_only_when_every_member_has_them(tmp_path, data):
    runs = tmp_path / "runs"
    ids = train_ids(data)
    a = make_run(runs, "a", data, ids[:6], seed=1)
    b = make_run(runs, "b", data, ids[6:], seed=2, images=False)
    assert ensemble(runs, [a, b]) == 0
    assert (runs / "ens" / "raw_test.csv").is_file()
    assert not list((runs / "ens").glob("*_images.csv"))


def test_refuses_an_existing_folder_unless_force(tmp_path, data, capsys):
    runs = tmp_path / "runs"
    ids = train_ids(data)
    a = make_run(runs, "a", data, ids[:6], seed=1)
    b = make_run(runs, "b", data, ids[6:], seed=2)
    (runs / "ens").mkdir()
    (runs / "ens" / "keep.txt").write_text("mine")
    assert ensemble(runs, [a, b]) == 2
    assert "--force" in capsys.readouterr().err
    assert (runs / "ens" / "keep.txt").read_text() == "mine"
    assert ensemble(runs, [a, b], "--force") == 0
    assert not (runs / "ens" / "keep.txt").exists() and (runs / "ens" / "raw_val.csv").is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["a", "b", "ens"]       # no temp left


@pytest.mark.parametrize("case, message", [
    ("one run", "at least two runs"),
    ("same run twice", "given twice"),
    ("other data", "data_dir"),
    ("partial overlap", "share 2 validation images but not all"),
    ("weights", "2 models"),
    ("no raw_test", "raw_test.csv"),
    ("bad raw_test", "score must be in"),
    ("stray val row", "not a validation image"),
    ("bad name", "plain folder name"),
])
def test_bad_members_are_refused_and_leave_nothing(tmp_path, data, capsys, case, message):
    runs = tmp_path / "runs"
    ids = train_ids(data)
    a = make_run(runs, "a", data, ids[:6], seed=1)
    b = make_run(runs, "b", data, ids[4:] if case == "partial overlap" else ids[6:], seed=2)
    members, extra = [a, b], []
    if case == "one run":
        members = [a]
    elif case == "same run twice":
        members = [a, runs / "a"]
    elif case == "other data":
        cfg = RunConfig.load(b / "config.json")
        dataclasses.replace(cfg, data_dir=str(tmp_path / "other")).save(b / "config.json")
        message = f"run {b} learned from data_dir"
    elif case == "weights":
        extra = ["--weights", "1", "2", "3"]
    elif case == "no raw_test":
        (b / "raw_test.csv").unlink()
    elif case == "bad raw_test":
        raw = pd.read_csv(b / "raw_test.csv")
        raw.loc[0, "score"] = 2.0
        raw.to_csv(b / "raw_test.csv", index=False)
    elif case == "stray val row":
        raw = pd.read_csv(a / "raw_val.csv")
        raw.loc[0, "patientId"] = ids[-1]
        raw.to_csv(a / "raw_val.csv", index=False)
    if case == "bad name":
        code = cli.main(["ensemble", "--runs", str(a), str(b), "--name", "x/y",
                         "--runs-dir", str(runs)])
    else:
        code = ensemble(runs, members, *extra)
    assert code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in runs.iterdir()) == ["a", "b"]


def test_ensemble_and_downstream_commands_do_not_import_tensorflow(tmp_path, data):
    runs = tmp_path / "runs"
    ids = train_ids(data)
    make_run(runs, "a", data, ids[:6], seed=1)
    make_run(runs, "b", data, ids[6:], seed=2)
    calls = [["ensemble", "--runs", "a", "b", "--name", "ens"],
             ["tune", "--run", "ens", *SMALL_GRID],
             ["submit", "--run", "ens", "--out", "sub.csv"],
             ["score", "--submission", "runs/ens/raw_val.csv", "--raw", "--labels",
              str(data / paths.TRAIN_LABELS)]]
    run_cli_without_tensorflow(calls, tmp_path)
    assert (tmp_path / "sub.csv").is_file() and (runs / "ens" / "postprocess.json").is_file()
