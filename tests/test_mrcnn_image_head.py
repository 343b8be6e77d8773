"""The kit's image-level classifier head (config.IMAGE_CLASSES > 0) on the tiny 64 px model."""
from __future__ import annotations

import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from kit.mrcnn import weights as W  # noqa: E402
from kit.mrcnn.data import IMAGE_CLASS_INPUT, DataGenerator  # noqa: E402
from kit.mrcnn.losses import LOSS_NAMES  # noqa: E402
from kit.mrcnn.model import MaskRCNN  # noqa: E402
from kit.mrcnn.training import layer_regex, make_optimizer  # noqa: E402
from test_mrcnn_training import _boxes_dataset, _model_config  # noqa: E402

KIT_WEIGHTED = ["kit_image_norm", "kit_image_fc", "kit_image_logits"]
COCO_HEADS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"]   # as kit.train.trainer excludes


def _config(**overrides):
    return _model_config(IMAGES_PER_GPU=2, IMAGE_CLASSES=3, **overrides)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(1)
    return {"plain": MaskRCNN("inference", _model_config(IMAGES_PER_GPU=2), root),
            "head": MaskRCNN("inference", _config(), root),
            "train": MaskRCNN("training", _config(WEIGHT_DECAY=0.0), root)}


def _dataset(classes):
    ds = _boxes_dataset([[(10, 10, 40, 30)], [], [(30, 8, 60, 40)], []][:len(classes)])
    for i, cls in enumerate(classes):
        ds.image_info[i]["image_class"] = cls
    return ds


def test_graphs_have_the_head_input_output_and_loss(models):
    head, train = models["head"].keras_model, models["train"].keras_model
    names = {layer.name for layer in head.layers}
    assert {"kit_image_pool", "kit_image_fc", "kit_image_logits", "kit_image_probs"} <= names
    plain = {layer.name for layer in models["plain"].keras_model.layers}
    assert not any(n.startswith("kit_") for n in plain)
    assert tuple(head.outputs[7].shape) == (None, 3) and len(head.outputs) == 8
    assert train.inputs[-1].name == IMAGE_CLASS_INPUT and train.inputs[-1].dtype == "int32"
    assert tuple(train.inputs[-1].shape) == (None,)
    assert [t._keras_history.operation.name for t in train.outputs[-6:]] == [
        *LOSS_NAMES, "kit_image_class_loss"]
    assert train.loss_names == (*LOSS_NAMES, "kit_image_class_loss")
    models["train"].set_trainable(layer_regex("heads"))
    trainable = {layer.name for layer in models["train"].get_trainable_layers()}
    assert set(KIT_WEIGHTED) <= trainable and "res5c_branch2c" not in trainable


def test_detect_returns_image_probs_that_sum_to_one(models):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    full = models["head"].detect(images)
    boxes = models["head"].detect(images, masks=False)
    for a, b in zip(full, boxes):
        assert a["image_probs"].shape == (3,) and a["image_probs"].dtype == np.float32
        assert a["image_probs"].sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(a["image_probs"], b["image_probs"], rtol=1e-5)
    assert not np.allclose(full[0]["image_probs"], full[1]["image_probs"])
    assert "image_probs" not in models["plain"].detect(images[:1])[0]


def _reports_without_new(report):
    return {k: v for k, v in report.items() if k != "new_in_model"}


def test_matterport_layout_file_loads_the_same_with_and_without_the_head(models, tmp_path):
    path = tmp_path / "coco_like.h5"             # every Matterport layer, no kit_ layer
    W.save_weights(models["plain"].keras_model, path)
    plain = W.load_weights(models["plain"].keras_model, path, exclude=COCO_HEADS)
    head = W.load_weights(models["head"].keras_model, path, exclude=COCO_HEADS)
    assert _reports_without_new(head) == _reports_without_new(plain)
    assert plain["new_in_model"] == [] and head["new_in_model"] == KIT_WEIGHTED
    assert head["missing_in_file"] == [] and head["excluded"] == COCO_HEADS
    assert len(head["loaded"]) > 100


def test_checkpoints_round_trip_the_head(models, tmp_path):
    fc = models["train"].keras_model.get_layer("kit_image_fc")
    fc.set_weights([w + 0.25 for w in fc.get_weights()])
    path = tmp_path / "small20250101T0000" / "mask_rcnn_small_0001.h5"
    W.save_weights(models["train"].keras_model, path)
    report = models["head"].load_weights(path)
    assert set(KIT_WEIGHTED) <= set(report["loaded"]) and report["new_in_model"] == []
    for name in KIT_WEIGHTED:
        for a, b in zip(models["head"].keras_model.get_layer(name).get_weights(),
                        models["train"].keras_model.get_layer(name).get_weights()):
            assert a.tobytes() == b.tobytes()
    into_plain = models["plain"].load_weights(path)       # a head checkpoint into a plain model
    assert set(KIT_WEIGHTED) <= set(into_plain["missing_in_model"])


def test_unknown_images_do_not_count_and_the_head_trains(models):
    model = models["train"]
    km = model.keras_model
    (x,) = DataGenerator(_dataset([2, -1]), model.config, shuffle=False)[0]
    assert x[IMAGE_CLASS_INPUT].tolist() == [2, -1]
    out = km(x, training=True)
    logits = out[-7].numpy()
    z = logits[0] - logits[0].max()
    want = -(z[2] - np.log(np.exp(z).sum()))
    assert float(out[-1]) == pytest.approx(want, rel=1e-4)        # image 2 (class -1) ignored

    model.set_trainable(layer_regex("heads"))
    km.compile(optimizer=make_optimizer(model.config, 0.002), jit_compile=False)
    before = {w.path: w.numpy().copy() for w in km.weights}
    (batch,) = DataGenerator(_dataset([0, 2]), model.config, shuffle=False)[0]
    losses = [float(km.train_on_batch(batch, return_dict=True)["kit_image_class_loss"])
              for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses
    after = {w.path: w.numpy() for w in km.weights}
    changed = {p.split("/")[-2] for p in before if not np.array_equal(before[p], after[p])}
    assert set(KIT_WEIGHTED) <= changed
    assert not any(re.match(r"res\d|bn\d", n) for n in changed)

