"""Faults during training: a NaN loss stops at that step with one line and keeps the last good
checkpoint; a full disk while writing a checkpoint is one line and keeps the previous file."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
import pytest

from kit import cli
from kit.runs import BEST_WEIGHTS, TRAIN_STATE, checkpoints


# tiny's two one-epoch stages on the same layers: one graph trace per training (no retrace), of
# the heads (their graph traces in about half the time of all layers')
SAME_LAYERS = ('stages=[{"layers": "heads", "epochs": 1}, '
               '{"layers": "heads", "epochs": 1, "lr_factor": 0.5, "augment": true}]')


@pytest.fixture
def data(in_tmp):
    from kit.data.demo import make_dataset

    make_dataset(Path("data/demo"), n_train=12, n_test=2, size=64, seed=5)
    return Path("data/demo")


def _poison_after_first_stage(monkeypatch, term_class: str) -> dict[Path, bytes]:
    """From the second stage on, ``term_class``'s loss is NaN: the traced loss is multiplied by a
    variable that is 1 during stage 1 and NaN once the trainer has finished it, so the poison
    reaches a graph the second stage reuses (same layers) as well as a retraced one. Returns the
    bytes of the run's checkpoints and best.h5 as they were before the NaN stage (filled then)."""
    import tensorflow as tf

    from kit.mrcnn import losses as L
    from kit.train import trainer

    layer = getattr(L, term_class)
    original, before = layer._fn, {}
    factor = tf.Variable(1.0, trainable=False, dtype=tf.float32)

    def loss(*args):
        value = original(*args)
        return value * tf.cast(factor, value.dtype)

    def trained_epochs(run):            # the trainer calls it after each stage
        if not before:
            before.update({p: p.read_bytes() for p in (*checkpoints(run), run / BEST_WEIGHTS)})
        factor.assign(float("nan"))
        return original_epochs(run)

    original_epochs = trainer.trained_epochs
    monkeypatch.setattr(layer, "_fn", staticmethod(loss))
    monkeypatch.setattr(trainer, "trained_epochs", trained_epochs)
    return before


@pytest.mark.slow
def test_nan_loss_stops_at_that_step_keeps_checkpoints_and_resume_lowers_the_lr(
        data, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        before = _poison_after_first_stage(patch, "MrcnnBboxLoss")
        code = cli.main(["train", "--preset", "tiny", "--data", str(data),
                         "--set", "image_head_refit=0", "--set", SAME_LAYERS,
                         "--set", "val_loss=true", "--set", "warmup_steps=2"])
    out, err = capsys.readouterr()
    assert code == 2
    # the stages of the warm-up's 2 steps say so (one step an epoch: both stages)
    assert out.count("(linear warm-up over the run's first 2 steps)") == 2, out
    (run,) = Path("runs").iterdir()
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert line.startswith(f"error: {run / TRAIN_STATE}: training stopped at epoch 2, step 1: "
                           "mrcnn_bbox_loss is nan (total loss nan); the last good "), line
    assert f"--resume {run} --set learning_rate=0.0002" in line
    state = json.loads((run / TRAIN_STATE).read_text())
    assert {k: state[k] for k in ("stopped_by", "epoch", "step", "term", "complete")} == {
        "stopped_by": "nan_loss", "epoch": 2, "step": 1, "term": "mrcnn_bbox_loss",
        "complete": False}
    (last,) = checkpoints(run)
    assert last.name.endswith("_0001.h5") and state["last_checkpoint"].endswith(last.name)
    assert sorted(before) == sorted([last, run / BEST_WEIGHTS])      # stage 1 wrote them
    assert all(p.read_bytes() == data for p, data in before.items())  # the NaN stage did not
    assert last.name in line and BEST_WEIGHTS in line
    # no checkpoint or history row from the NaN epoch
    assert not list(run.rglob("*_0002.h5")) and not list(run.rglob(".*.tmp"))

    assert cli.main(["train", "--resume", str(run), "--set", "image_size=128"]) == 2
    assert "only --set learning_rate" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--set", "learning_rate=0.0002"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "at epoch 2" in out
    assert checkpoints(run)[-1].name.endswith("_0002.h5")
    state = json.loads((run / TRAIN_STATE).read_text())
    assert state["complete"] and state["stopped_by"] is None
    assert state["resumed_with"] == [{"epoch": 2, "set": ["learning_rate=0.0002"],
                                      "learning_rate": [0.002, 0.0002]}]
    assert json.loads((run / "config.json").read_text())["learning_rate"] == 0.0002
    history = pd.read_csv(run / "history.csv")     # val_loss=true: the loss of the val images
    assert history.epoch.tolist() == [1, 2] and history.val_loss.notna().all()


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import keras

    from kit import io
    from kit.errors import KitError
    from kit.mrcnn.weights import save_weights

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1024, name="dense")(inputs))
    path = tmp_path / "mask_rcnn_x_0001.h5"
    save_weights(model, path)
    before = path.read_bytes()
    write = io._RecordingFileIO.write

    def full(self, data):           # the disk fills up after the first few kB
        if self.tell() > 2000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(io._RecordingFileIO, "write", full)
    model.layers[-1].kernel.assign(model.layers[-1].kernel + 1.0)
    with pytest.raises(KitError) as err:
        save_weights(model, path)
    message = str(err.value)
    assert message.startswith(f"{path}: no space left on the device (") and "\n" not in message
    assert " free): free some space and rerun; the previous file is intact" in message
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.setattr(io._RecordingFileIO, "write", write)      # space freed: the rerun works
    save_weights(model, path)
    assert path.read_bytes() != before
