"""Epoch checkpoints: legacy-layout files per epoch, optionally only the newest N kept."""
import keras
import numpy as np

from kit.mrcnn.training import Checkpoint
from kit.mrcnn.weights import load_weights


def _model():
    inp = keras.Input((3,))
    return keras.Model(inp, keras.layers.Dense(2, name="mrcnn_bbox_fc")(inp))


def test_checkpoint_keeps_only_the_newest(tmp_path):
    model = _model()
    template = str(tmp_path / "mask_rcnn_x_{epoch:04d}.h5")
    cb = Checkpoint(model, template, keep_last=2)
    for epoch in range(4):
        cb.on_epoch_end(epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask_rcnn_x_0003.h5",
                                                         "mask_rcnn_x_0004.h5"]
    other = _model()
    report = load_weights(other, tmp_path / "mask_rcnn_x_0004.h5")
    assert "mrcnn_bbox_fc" in report["loaded"]
    np.testing.assert_array_equal(other.layers[1].kernel.numpy(), model.layers[1].kernel.numpy())


def test_checkpoint_keep_zero_keeps_every_epoch(tmp_path):
    cb = Checkpoint(_model(), str(tmp_path / "m_{epoch:04d}.h5"), keep_last=0)
    for epoch in range(3):
        cb.on_epoch_end(epoch)
    assert len(list(tmp_path.iterdir())) == 3
