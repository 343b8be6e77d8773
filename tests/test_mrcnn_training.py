"""Mask R-CNN training: loss model, layer groups, callbacks; train() with the real MaskRCNN."""
from __future__ import annotations

import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from kit.mrcnn import training as T  # noqa: E402
from kit.mrcnn.losses import RpnBboxLoss, RpnClassLoss  # noqa: E402

A = 12  # anchors of the toy model


def _toy_model(loss_weights=None, weight_decay=0.01) -> T.TrainingModel:
    """A small functional model ending in two RPN loss layers (no MaskRCNN needed)."""
    feats = keras.Input((A, 3), name="feats")
    match = keras.Input((A, 1), dtype="int32", name="input_rpn_match")
    target = keras.Input((4, 4), name="input_rpn_bbox")
    h = keras.layers.Dense(8, name="rpn_conv")(feats)
    h = keras.layers.BatchNormalization(name="bn_rpn")(h)
    logits = keras.layers.Dense(2, name="rpn_class_raw")(h)
    deltas = keras.layers.Dense(4, name="rpn_bbox_pred")(h)
    c = RpnClassLoss(name="rpn_class_loss")([match, logits])
    b = RpnBboxLoss(name="rpn_bbox_loss")([target, match, deltas])
    return T.TrainingModel(inputs=[feats, match, target], outputs=[logits, deltas, c, b],
                           loss_names=("rpn_class_loss", "rpn_bbox_loss"),
                           loss_weights=loss_weights, weight_decay=weight_decay)


class _ToyData(keras.utils.PyDataset):
    def __init__(self, positives: bool = True, batches: int = 3):
        super().__init__()
        self.positives, self.batches = positives, batches

    def __len__(self):
        return self.batches

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        match = np.where(rng.random((2, A, 1)) < 0.5, -1, 0).astype(np.int32)
        target = np.zeros((2, 4, 4), np.float32)
        if self.positives:
            match[:, :2] = 1
            target[:, :2] = rng.normal(size=(2, 2, 4))
        return ({"feats": rng.normal(size=(2, A, 3)).astype(np.float32),
                 "input_rpn_match": match, "input_rpn_bbox": target},)


def test_layer_groups_select_the_expected_layers():
    names = ["conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch1", "res3b_branch2c", "bn3d_branch2b",
             "res4f_branch2a", "bn4w_branch2c", "res5c_branch2a", "bn5a_branch1", "fpn_c5p5", "fpn_p6",
             "rpn_conv_shared", "rpn_model", "mrcnn_class_logits", "mrcnn_mask_bn4"]

    def picked(group):
        return {n for n in names if re.fullmatch(T.layer_regex(group), n)}

    heads = {"fpn_c5p5", "fpn_p6", "rpn_conv_shared", "rpn_model", "mrcnn_class_logits",
             "mrcnn_mask_bn4"}
    assert picked("heads") == heads
    assert picked("5+") == heads | {"res5c_branch2a", "bn5a_branch1"}
    assert picked("4+") == picked("5+") | {"res4f_branch2a", "bn4w_branch2c"}
    assert picked("3+") == picked("4+") | {"res3b_branch2c", "bn3d_branch2b"}
    assert picked("all") == set(names)
    assert picked(r"res5.*") == {"res5c_branch2a"}
    with pytest.raises(ValueError, match="valid regex"):
        T.layer_regex("res5(")


def test_l2_skips_gamma_beta_and_matches_numpy():
    model = _toy_model(weight_decay=0.01)
    want = 0.01 * sum(np.mean(np.square(w.numpy())) for w in model.trainable_weights
                      if w.name not in ("gamma", "beta"))
    assert len(model.trainable_weights) == 8          # 3 dense x (kernel, bias) + gamma + beta
    np.testing.assert_allclose(float(model.l2_loss()), want, rtol=1e-6)


def test_fit_tracks_each_loss_and_val_loss_is_the_weighted_sum():
    model = _toy_model(loss_weights={"rpn_class_loss": 2.0, "rpn_bbox_loss": 0.5})
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, clipnorm=5.0),
                  jit_compile=False)
    history = model.fit(_ToyData(), validation_data=_ToyData(batches=2), epochs=1, verbose=0)
    h = {k: v[0] for k, v in history.history.items()}
    assert {"loss", "rpn_class_loss", "rpn_bbox_loss", "val_loss", "val_rpn_class_loss",
            "val_rpn_bbox_loss"} <= set(h)
    np.testing.assert_allclose(h["val_loss"], 2.0 * h["val_rpn_class_loss"]
                               + 0.5 * h["val_rpn_bbox_loss"], rtol=1e-5)
    assert h["loss"] > 2.0 * h["rpn_class_loss"] + 0.5 * h["rpn_bbox_loss"]   # + L2
    with pytest.raises(ValueError, match="unknown losses"):
        _toy_model(loss_weights={"rpn_clas_loss": 1.0})


def test_all_negative_batch_trains_with_finite_loss():
    model = _toy_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False)
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(_ToyData(positives=False, batches=2), epochs=1, verbose=0)
    assert history.history["rpn_bbox_loss"][0] == 0.0
    assert np.isfinite(history.history["loss"][0])
    after = model.trainable_weights
    assert all(np.all(np.isfinite(w.numpy())) for w in after)
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, after))


def test_history_csv_appends_and_replaces_rerun_epochs(tmp_path):
    cb = T.HistoryCSV(tmp_path / "history.csv")
    cb.on_epoch_end(0, {"loss": 3.0})
    cb.on_epoch_end(1, {"loss": 2.0, "val_loss": 2.5})
    cb.on_epoch_end(1, {"loss": 1.5, "val_loss": 2.2})     # epoch 2 re-run after a crash
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == ["epoch,loss,val_loss", "1,3.0,", "2,1.5,2.2"]


def test_terminate_on_nan_names_epoch_batch_and_loss():
    cb = T.TerminateOnNaN("load_weights(find_last()) in runs/x", 0.02)
    cb.on_epoch_begin(4)
    cb.on_train_batch_end(0, {"loss": 1.0})
    with pytest.raises(FloatingPointError, match=r"epoch 5, batch 3 \(non-finite: rpn_bbox_loss\)"
                                                 r".*learning rate \(now 0.02\)"):
        cb.on_train_batch_end(2, {"loss": float("nan"), "rpn_bbox_loss": float("inf"),
                                  "rpn_class_loss": 0.5})
