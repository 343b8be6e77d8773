"""Training on the tiny preset: same seed -> same losses; val_map in history.csv; predict loads the
best checkpoint; folds give disjoint val sets.

The first run of the same-seed pair is the shared tiny flow's (conftest ``tiny_flow``); that
another seed gives other losses is tested on the model (test_mrcnn_seed) and here only that the
run's seed reaches the model's config."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit import cli
from kit.config import get_preset
from kit.mrcnn.config import config_from
from kit.runs import checkpoint_of
from kit.train.trainer import load_run_data, train
from test_bench_image_features import image_features

LOSSES = ["loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
          "mrcnn_mask_loss", "kit_image_class_loss"]


@pytest.fixture
def data(in_tmp):
    from kit.data.demo import make_dataset

    make_dataset(Path("data/demo"), n_train=16, n_test=4, size=64, seed=8)
    return Path("data/demo")


def test_the_run_seed_reaches_the_model_config():
    assert config_from(get_preset("tiny", ["seed=4"]).mrcnn_fields()).SEED == 4
    assert config_from(get_preset("tiny", ["seed=5"]).mrcnn_fields()).SEED == 5


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_flow")   # the shared flow is built once, on one worker
def test_same_seed_same_history_and_the_best_checkpoint_is_predicted_from(in_flow, capsys):
    (flow_run,) = Path("runs").iterdir()            # the shared flow's run: tiny, seed 0
    again = train(preset="tiny", data_dir=Path("data/demo"), runs_dir=Path("runs-same-seed"))
    runs = [again, flow_run]          # checks that touch files run on the new run only
    h = [pd.read_csv(run / "history.csv") for run in runs]
    assert h[0].epoch.tolist() == [1, 2] and "val_map" in h[0].columns
    # Same seed, same history. Separate processes give byte-identical outputs (the demo's raw
    # tables), but inside the long pytest process the first loss of one run once differed in its
    # last float32 bit (21.455805 vs 21.455807): equal to float32 rounding, val_map exactly.
    np.testing.assert_allclose(h[0][LOSSES].to_numpy(), h[1][LOSSES].to_numpy(), rtol=1e-6)
    assert h[0]["val_map"].equals(h[1]["val_map"])
    run = runs[0]
    best = json.loads((run / "best.json").read_text())
    assert best["val_map"] == h[0].val_map.max()
    assert best["epoch"] == int(h[0].epoch[h[0].val_map.idxmax()])
    assert checkpoint_of(run, "best") == run / "best.h5"
    assert checkpoint_of(run, "last").name.endswith("_0002.h5")
    state = json.loads((run / "train_state.json").read_text())
    assert state["complete"] and not state["stopped_by_budget"]
    refit = state["image_head_refit"]         # the head of best.h5 was refitted, reproducibly
    assert refit["checkpoint"] == "best.h5"
    assert refit["images"] == len(pd.read_csv(run / "train_ids.csv"))
    assert refit["loss_after"] < refit["loss_before"]
    flow_refit = json.loads((runs[1] / "train_state.json").read_text())["image_head_refit"]
    assert {k: v for k, v in refit.items() if k != "seconds"} == \
        {k: v for k, v in flow_refit.items() if k != "seconds"}
    capsys.readouterr()
    assert cli.main(["predict", "--run", str(run), "--split", "val"]) == 0
    assert f"weights {run / 'best.h5'}" in capsys.readouterr().out
    images = pd.read_csv(run / "raw_val_images.csv")
    val_ids = pd.read_csv(run / "val_ids.csv").patientId.astype(str).tolist()
    assert images.patientId.astype(str).tolist() == val_ids
    assert images.p_opacity.between(0, 1).all()
    assert cli.main(["predict", "--run", str(run), "--split", "val", "--checkpoint", "last"]) == 0
    assert "_0002.h5" in capsys.readouterr().out
    probe = image_features()                  # bench/image_features.py on this trained run
    assert probe.main(["--run", str(run), "--layers", "res5c_out", "kit_image_pool"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert found["images"] == {"train": len(pd.read_csv(run / "train_ids.csv")),
                               "val": len(val_ids)}
    assert found["layers"]["res5c_out"]["dim"] == 2 * 2048
    fpn = json.loads((run / "config.json").read_text())["top_down_pyramid_size"]
    assert found["layers"]["kit_image_pool"]["dim"] == 2 * 4 * fpn    # avg + max of P2..P5
    for l2 in ("l2=1", "l2=30"):           # None: the split lacks positives or negatives
        for auc in found["layers"]["kit_image_pool"][l2].values():
            assert auc is None or 0.0 <= auc <= 1.0


def test_folds_validate_on_disjoint_images(data):
    runs = []
    for k in (0, 1):      # what train() does first: the run's split (prepare + ids, no model)
        cfg = get_preset("tiny", ["folds=2", f"fold={k}"])
        run = Path("runs") / f"fold{k}"
        run.mkdir(parents=True)
        load_run_data(dataclasses.replace(cfg, data_dir=str(data)), run)
        runs.append(run)
    val = [set(pd.read_csv(run / "val_ids.csv").patientId.astype(str)) for run in runs]
    train_ids = [set(pd.read_csv(run / "train_ids.csv").patientId.astype(str)) for run in runs]
    assert not val[0] & val[1]
    assert val[0] | val[1] == train_ids[0] | val[0] == train_ids[1] | val[1]
    assert train_ids[0] == val[1] and train_ids[1] == val[0]


def test_traces_left_counts_only_stages_on_other_layers():
    from kit.train.trainer import traces_left

    kaggle = get_preset("kaggle")            # heads 1-2, 4+ 3-6, all 7-12: two more traces
    assert [traces_left(kaggle, d) for d in (0, 2, 3, 6, 7, 12)] == [2, 2, 1, 1, 0, 0]
    demo = get_preset("demo")                # all, all (lr x0.3), all (lr x0.1): one graph
    assert [traces_left(demo, d) for d in range(13)] == [0] * 13
