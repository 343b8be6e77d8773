"""Kernels that carry their settings (preset, --set, budget, suffix) and continue across sessions."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from kaggle_mock import USERNAME, bounded, mock_kaggle, no_creds  # noqa: F401  (fixtures)

from kit import cli, paths
from kit.flow import kernel as driver

REPO = Path(__file__).resolve().parent.parent


def test_build_bakes_settings_and_a_separate_fold_kernel(tmp_path, monkeypatch):
    assert cli.main(["kernels", "build", "train", "--owner", "alice", "--build-dir",
                     str(tmp_path), "--preset", "r50-heads", "--set", "folds=5", "--set", "fold=2",
                     "--time-budget", "8h", "--suffix", "fold2", "--continue"]) == 0
    folder = tmp_path / "train-fold2"
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/rsna-kit-train-fold2" and meta["title"] == "rsna-kit train fold2"
    assert meta["kernel_sources"] == ["alice/rsna-kit-train-fold2"]     # its own previous output
    text = (folder / "kernel.py").read_text()
    assert "_os.environ.setdefault('KIT_PRESET', 'r50-heads')" in text
    assert "_os.environ.setdefault('KIT_SET', '[\"folds=5\", \"fold=2\"]')" in text
    assert "_os.environ.setdefault('KIT_TIME_BUDGET', '8h')" in text
    # the settings reach the kernel's command line (dry run, in-process)
    monkeypatch.setenv("KIT_SET", json.dumps(["folds=5", "fold=2"]))
    k = driver.parse_args(["--input", str(tmp_path), "--dry-run"])
    assert k.overrides == ("folds=5", "fold=2") and k.preflight is True
    assert k.set_args() == ["--set", "folds=5", "--set", "fold=2"]


@pytest.mark.parametrize("args, message", [
    (["--set", "fold=7", "--set", "folds=5"], "fold=7"),
    (["--preset", "nope"], "unknown preset"),
    (["--time-budget", "soon"], "time budget"),
    (["--suffix", "Fold 2"], "suffix")])
def test_build_refuses_bad_settings(tmp_path, args, message, capsys):
    assert cli.main(["kernels", "build", "train", "--owner", "alice", "--build-dir",
                     str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_push_continue_attaches_its_own_output(tmp_path, mock_kaggle):
    assert cli.main(["kernels", "push", "train", "--continue", "--build-dir", str(tmp_path)]) == 0
    sent = mock_kaggle.body("SaveKernel")
    assert sent["slug"] == f"{USERNAME}/rsna-kit-train"
    assert sent["kernelDataSources"] == [f"{USERNAME}/rsna-kit-train"]


def _train_kernel():
    spec = importlib.util.spec_from_file_location("train_kernel", REPO / "kernels/train/kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_kernel_resumes_its_previous_session(in_tmp, monkeypatch, capsys):
    from kit.data.demo import make_dataset

    for key, value in (("KIT_PRESET", "tiny"), ("KIT_PREFLIGHT", "0"), ("KIT_TIME_BUDGET", "1h"),
                       ("KIT_TIME_BUDGET_DEADLINE", "0"),
                       # every epoch's checkpoint kept; tiny's two epochs in one stage on the
                       # heads, so each session traces the (cheaper) heads graph once
                       ("KIT_SET", json.dumps(["keep_checkpoints=0", 'stages=[{"layers": '
                                               '"heads", "epochs": 2}]']))):
        monkeypatch.setenv(key, value)                 # restored after the test
    monkeypatch.delenv("KIT_TIME_BUDGET_DEADLINE")
    data = in_tmp / "input" / "competitions" / paths.COMPETITION
    make_dataset(data, n_train=16, n_test=4, size=64, seed=4)
    kernel = _train_kernel()
    first = ["--input", str(in_tmp / "input"), "--working", str(in_tmp / "w1"),
             "--scratch", str(in_tmp / "s1")]
    assert driver.main(kernel.steps, first) == 0
    (run1,) = (in_tmp / "w1" / "runs").iterdir()
    # the session cap hit during epoch 2: only epoch 1's checkpoint made it into the output
    for ckpt in run1.rglob("mask_rcnn_*_0002.h5"):
        ckpt.unlink()
    (run1 / "train_state.json").unlink()
    # the next version of the kernel sees its previous output under /kaggle/input/<slug>
    (in_tmp / "input2" / "competitions").mkdir(parents=True)
    shutil.copytree(data, in_tmp / "input2" / "competitions" / paths.COMPETITION)
    shutil.copytree(in_tmp / "w1", in_tmp / "input2" / "rsna-kit-train")
    capsys.readouterr()
    second = ["--input", str(in_tmp / "input2"), "--working", str(in_tmp / "w2"),
              "--scratch", str(in_tmp / "s2")]
    assert driver.main(kernel.steps, second) == 0
    out = capsys.readouterr().out
    run2 = in_tmp / "w2" / "runs" / run1.name
    assert f"train --resume {run2}" in out and "at epoch 2" in out
    assert [p.name for p in sorted(run2.rglob("mask_rcnn_*.h5"))][-1].endswith("_0002.h5")
    history = pd.read_csv(run2 / "history.csv")
    assert history.epoch.tolist() == [1, 2]
    assert json.loads((run2 / "train_state.json").read_text())["complete"] is True
    cfg = json.loads((run2 / "config.json").read_text())
    assert cfg["data_dir"] == str(in_tmp / "input2" / "competitions" / paths.COMPETITION)
