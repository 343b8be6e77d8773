"""Mask R-CNN training: loss model, layer groups, callbacks; train() with the real MaskRCNN."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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
             "rpn_conv_shared", "rpn_model", "mrcnn_class_logits", "mrcnn_mask_bn4", "kit_image_fc"]

    def picked(group):
        return {n for n in names if re.fullmatch(T.layer_regex(group), n)}

    heads = {"fpn_c5p5", "fpn_p6", "rpn_conv_shared", "rpn_model", "mrcnn_class_logits",
             "mrcnn_mask_bn4", "kit_image_fc"}           # kit_*: the kit's own heads train too
    assert picked("heads") == heads
    assert picked("5+") == heads | {"res5c_branch2a", "bn5a_branch1"}
    assert picked("4+") == picked("5+") | {"res4f_branch2a", "bn4w_branch2c"}
    assert picked("3+") == picked("4+") | {"res3b_branch2c", "bn3d_branch2b"}
    assert picked("all") == set(names)
    assert picked(r"res5.*") == {"res5c_branch2a"}
    with pytest.raises(ValueError, match="valid regex"):
        T.layer_regex("res5(")


@pytest.mark.parametrize("name,cls,mixed", [("SGD", "SGD", False), ("ADAM", "Adam", False),
                                             ("ADAM", "LossScaleOptimizer", True)])
def test_make_optimizer_follows_config(name, cls, mixed):
    config = type("C", (), dict(OPTIMIZER=name, LEARNING_MOMENTUM=0.8, GRADIENT_CLIP_NORM=3.0,
                                MIXED_PRECISION=mixed))()
    opt = T.make_optimizer(config, 0.02)
    assert type(opt).__name__ == cls
    inner = opt.inner_optimizer if mixed else opt
    assert float(inner.learning_rate) == pytest.approx(0.02)
    assert inner.clipnorm == 3.0
    if name == "SGD":
        assert inner.momentum == 0.8


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


def test_terminate_on_nan_names_epoch_step_and_loss_and_checks_the_weights():
    cb = T.TerminateOnNaN("load_weights(find_last()) in runs/x", 0.02)
    cb.on_epoch_begin(4)
    cb.on_train_batch_end(0, {"loss": 1.0})
    with pytest.raises(T.NonFiniteLoss, match=r"epoch 5, step 3 \(non-finite: rpn_bbox_loss\)"
                                              r".*learning rate \(now 0.02\)") as err:
        cb.on_train_batch_end(2, {"loss": float("nan"), "rpn_bbox_loss": float("inf"),
                                  "rpn_class_loss": 0.5})
    assert (err.value.epoch, err.value.step, err.value.term) == (5, 3, "rpn_bbox_loss")
    assert "\n" not in str(err.value) and isinstance(err.value, FloatingPointError)
    model = _toy_model()
    cb.set_model(model)
    cb.on_epoch_end(4, {"loss": 1.0})                 # finite weights: nothing happens
    model.trainable_weights[0].assign(np.full(model.trainable_weights[0].shape, np.inf))
    with pytest.raises(T.NonFiniteLoss, match=r"weights are not finite.*epoch 5, step 3"):
        cb.on_epoch_end(4, {"loss": 1.0})


def test_mixed_precision_step_keeps_float32_losses_and_scales_the_loss():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _toy_model()
        model.compile(optimizer=keras.optimizers.SGD(0.01, clipnorm=5.0), jit_compile=False)
        history = model.fit(_ToyData(batches=2), epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer("rpn_class_loss").compute_dtype == "float32"
    assert model.get_layer("rpn_class_raw").compute_dtype == "float16"
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert np.isfinite(history.history["loss"][0]) and history.history["rpn_bbox_loss"][0] > 0


# ------------------------------------------------------------------ with the real MaskRCNN
REPO = Path(__file__).resolve().parent.parent
PRELUDE = f"""
import os, sys, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
"""


def _model_config(**overrides):
    from test_mrcnn_data import TinyConfig

    class ModelConfig(TinyConfig):
        BACKBONE = "resnet50"
        IMAGES_PER_GPU = 1
        STEPS_PER_EPOCH = 2
        VALIDATION_STEPS = 1
        TRAIN_ROIS_PER_IMAGE = 16
        POST_NMS_ROIS_TRAINING = 64
        POST_NMS_ROIS_INFERENCE = 64
        PRE_NMS_LIMIT = 256
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        TOP_DOWN_PYRAMID_SIZE = 32
        POOL_SIZE = 7
        MASK_POOL_SIZE = 7
        MASK_SHAPE = [14, 14]
        DETECTION_MAX_INSTANCES = 10

    config = ModelConfig()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _boxes_dataset(boxes):
    from test_mrcnn_data import BoxDataset

    return BoxDataset(boxes)


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (own TF runtime) with ``args`` as sys.argv[1:]."""
    return subprocess.run([sys.executable, "-c", PRELUDE + code, *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def mrcnn():
    return pytest.importorskip("kit.mrcnn.model")


def _snapshot(keras_model) -> dict[str, np.ndarray]:
    return {w.path: np.array(w.numpy(), copy=True) for w in keras_model.weights}


def test_heads_step_leaves_backbone_and_frozen_bn_bit_identical(mrcnn, tmp_path):
    # seeded: which pyramid levels get sampled anchors/ROIs (so a gradient) depends on the draw,
    # and the initial weights on the global seed (else on the tests that ran before in this process)
    import keras

    keras.utils.set_random_seed(1)
    model = mrcnn.MaskRCNN("training", _model_config(STEPS_PER_EPOCH=1, SEED=1), tmp_path)
    ds = _boxes_dataset([[(10, 10, 40, 30)], [(30, 8, 60, 40), (4, 40, 20, 60)]])
    before = _snapshot(model.keras_model)
    history = model.train(ds, None, 0.02, 1, "heads", workers=2)     # thread workers
    after = _snapshot(model.keras_model)
    assert model.epoch == 1 and np.isfinite(history.history["loss"][0])
    frozen = [p for p in before if re.match(r"(res\d|bn\d|conv1|bn_conv1)", p.split("/")[-2])
              or "moving_" in p]
    assert len(frozen) > 200
    changed = [p for p in frozen if not np.array_equal(before[p], after[p])]
    assert changed == []
    # heads with a gradient on any batch (box/mask heads only learn from positive ROIs; the
    # output conv of pyramid level 3..5 only when a sampled anchor or ROI lies on that level)
    heads = [p for p in before if re.match(r"(mrcnn_class|rpn_|fpn_)", p.split("/")[-2])
             and p.endswith("kernel") and not re.match(r"fpn_p[345]/", p)]
    assert {p.split("/")[-2] for p in heads} >= {"fpn_c5p5", "fpn_p2", "rpn_conv_shared",
                                                "rpn_class_raw", "mrcnn_class_logits"}
    assert [p for p in heads if np.array_equal(before[p], after[p])] == []

    # layer groups on the real model: trainable layers are exactly the group's
    for group, must, must_not in [("heads", "mrcnn_class_logits", "res5a_branch2a"),
                                  ("5+", "res5a_branch2a", "res4a_branch2a"),
                                  ("4+", "res4f_branch2c", "res3a_branch2a"),
                                  ("3+", "bn3d_branch2c", "res2a_branch2a"),
                                  ("all", "conv1", None)]:
        model.set_trainable(T.layer_regex(group))
        names = {layer.name for layer in model.get_trainable_layers()}
        assert must in names and must_not not in names, group
        assert all(re.fullmatch(T.layer_regex(group), n) for n in names)


KILL_MID_EPOCH = """
import signal
import keras
from kit.mrcnn.model import MaskRCNN
from test_mrcnn_training import _boxes_dataset, _model_config

class KillInEpoch2(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

ds = _boxes_dataset([[(10, 10, 40, 30)], []])
model = MaskRCNN("training", _model_config(), sys.argv[1])
model.train(ds, None, 0.02, 3, "heads", custom_callbacks=[KillInEpoch2()])
"""


@pytest.mark.slow
def test_checkpoint_kill_resume_continues_at_next_epoch(mrcnn, tmp_path):
    import h5py

    proc = _run_python(KILL_MID_EPOCH, str(tmp_path))
    assert proc.returncode == -9, proc.stderr[-3000:]
    model = mrcnn.MaskRCNN("training", _model_config(), tmp_path)
    last = model.find_last()
    assert last.endswith("mask_rcnn_tiny_0001.h5")
    model.load_weights(last)
    assert model.epoch == 1 and model.log_dir == str(Path(last).parent)

    from kit.mrcnn.weights import save_weights

    save_weights(model.keras_model, tmp_path / "reloaded.h5")

    def datasets(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                         else None)
        return out

    saved, loaded = datasets(last), datasets(tmp_path / "reloaded.h5")
    assert saved.keys() == loaded.keys() and len(saved) > 300
    assert all(np.array_equal(saved[k], loaded[k]) for k in saved)

    # the resumed epoch trains on images without boxes only: zero box/mask losses, no NaN
    empty = _boxes_dataset([[], []])
    history = model.train(empty, empty, 0.02, 2, "heads", workers=2)
    assert history.epoch == [1] and model.epoch == 2
    for name in ("rpn_bbox_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss"):
        assert history.history[name] == [0.0] and history.history[f"val_{name}"] == [0.0]
    assert history.history["rpn_class_loss"][0] > 0 and np.isfinite(history.history["loss"][0])
    assert all(np.all(np.isfinite(w.numpy())) for w in model.keras_model.trainable_weights)
    assert model.find_last().endswith("mask_rcnn_tiny_0002.h5")
    rows = (Path(model.log_dir) / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert model.train(empty, empty, 0.02, 2, "heads") is None    # already there
    model.set_log_dir(last)                                        # back to epoch 1
    with pytest.raises(FileExistsError, match="0002.h5"):
        model.train(empty, empty, 0.02, 2, "heads")


MIRRORED = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kit.mrcnn.model import MaskRCNN
from test_mrcnn_training import _boxes_dataset, _model_config

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
config = _model_config(GPU_COUNT=2, IMAGES_PER_GPU=1, STEPS_PER_EPOCH=1, SEED=3,
                       IMAGE_CLASSES=3, PROPOSALS_WITH_GT=True)   # the kit's additions too
model = MaskRCNN("training", config, sys.argv[1], strategy=strategy)
ds = _boxes_dataset([[(10, 10, 40, 30)], [], [(30, 8, 60, 40)]])
for i, cls in enumerate([0, 2, -1]):
    ds.image_info[i]["image_class"] = cls
h = model.train(ds, ds, 0.02, 1, "heads").history
print(json.dumps({"replicas": model.strategy.num_replicas_in_sync,
                  "history": {k: v[0] for k, v in h.items()}}))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_runs_a_step(mrcnn, tmp_path):
    proc = _run_python(MIRRORED, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert all(np.isfinite(v) for v in out["history"].values())
    assert {"rpn_class_loss", "val_mrcnn_mask_loss", "kit_image_class_loss",
            "val_kit_image_class_loss"} <= set(out["history"])


def _calibrate_frozen_bn(model, ds) -> None:
    """Stand-in for pretrained BN statistics: set every BN's moving mean/variance to this data's.

    A randomly initialised ResNet with frozen identity BN has activations in the 1e4s and
    trains erratically; ImageNet/COCO weights never look like that. One training-mode forward
    pass with momentum 0 copies the batch statistics into the moving ones, then BN is frozen again.
    """
    from kit.mrcnn.data import DataGenerator

    bns = [layer for layer in model.keras_model.layers if hasattr(layer, "train_bn")]
    assert len(bns) > 50
    for layer in bns:
        layer.train_bn, layer.momentum = True, 0.0
    model.keras_model(DataGenerator(ds, model.config, shuffle=False)[0][0], training=True)
    for layer in bns:
        layer.train_bn, layer.momentum = False, 0.99


@pytest.mark.slow
def test_tiny_model_overfits_one_image_and_detect_finds_the_box(mrcnn, tmp_path):
    from kit.mrcnn import utils

    keras.utils.set_random_seed(0)
    box = (16, 12, 44, 40)
    config = _model_config(STEPS_PER_EPOCH=10, DETECTION_MIN_CONFIDENCE=0.5,
                           ROI_POSITIVE_RATIO=0.5, RPN_NMS_THRESHOLD=0.9)
    ds = _boxes_dataset([[box]])
    model = mrcnn.MaskRCNN("training", config, tmp_path)
    _calibrate_frozen_bn(model, ds)
    loss = model.train(ds, None, 0.01, 15, "heads").history["loss"]
    assert loss[-1] < 0.3 * loss[0], loss
    infer = mrcnn.MaskRCNN("inference", config, tmp_path)
    infer.load_weights(model.find_last())
    result = infer.detect([ds.load_image(0)])[0]
    assert len(result["rois"]) >= 1
    iou = utils.compute_overlaps(result["rois"], np.array([box]))[:, 0]
    assert iou.max() > 0.5, (result["rois"], result["scores"])


# Two stages on the same layers (the demo's lr steps): once reusing the traced graph with the
# optimizer restarted, once compiled afresh per stage, in one fresh process with op determinism.
TWO_STAGES = """
import hashlib
import tensorflow as tf
import keras
tf.config.experimental.enable_op_determinism()
from kit.mrcnn.model import MaskRCNN
from test_mrcnn_training import _boxes_dataset, _model_config

ds = _boxes_dataset([[(10, 10, 40, 30)], [], [(30, 8, 60, 40), (4, 40, 20, 60)], []])

def run(reuse, folder):
    keras.utils.set_random_seed(7)
    model = MaskRCNN("training", _model_config(SEED=7, STEPS_PER_EPOCH=2, OPTIMIZER="ADAM"),
                     folder)
    traces, step = [], model.keras_model.train_step     # called once per trace of the step
    model.keras_model.train_step = lambda data: traces.append(1) or step(data)
    model.train(ds, None, 0.001, 1, "heads")
    traced = model.keras_model.train_function
    if not reuse:
        model.compiled_for = None            # what train() did before: compile each stage
    history = model.train(ds, None, 0.0003, 2, "heads")
    weights = b"".join(w.numpy().tobytes() for w in model.keras_model.weights)
    return {"loss": history.history["loss"], "same_graph": model.keras_model.train_function is traced,
            "traces": len(traces),
            "lr": float(model.keras_model.optimizer.learning_rate),
            "weights": hashlib.sha256(weights).hexdigest()}

print(json.dumps([run(True, sys.argv[1] + "/a"), run(False, sys.argv[1] + "/b")]))
"""


@pytest.mark.slow
def test_a_stage_that_only_changes_the_lr_reuses_the_graph_with_the_same_result(tmp_path):
    proc = _run_python(TWO_STAGES, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reused, fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reused["same_graph"] and not fresh["same_graph"]
    # the optimizer is built before fit: the step is traced once per compile, not twice (a
    # tf.function whose first trace creates variables is traced again)
    assert (reused["traces"], fresh["traces"]) == (1, 2)
    assert reused["lr"] == pytest.approx(0.0003) and fresh["lr"] == pytest.approx(0.0003)
    assert reused["loss"] == fresh["loss"]               # a restarted optimizer is a new one
    assert reused["weights"] == fresh["weights"]
