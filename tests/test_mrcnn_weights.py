"""kit.mrcnn.weights: legacy Keras-2 HDF5 layout read/write and report (fetching the published
files is kit.data.weights: tests/test_weights_fetch.py)."""
from __future__ import annotations

import logging

import h5py
import keras
import numpy as np

from kit.mrcnn import weights as W
from kit.mrcnn.backbone import BatchNorm, resnet_graph


def _small_model() -> keras.Model:
    """conv1 + bn_conv1 + a nested rpn_model, like the corresponding part of Mask R-CNN."""
    inner_in = keras.Input((None, None, 4))
    shared = keras.layers.Conv2D(3, 1, name="rpn_conv_shared")(inner_in)
    rpn = keras.Model(inner_in, keras.layers.Conv2D(2, 1, name="rpn_class_raw")(shared),
                      name="rpn_model")
    x_in = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x_in)
    x = BatchNorm(name="bn_conv1")(x)
    return keras.Model(x_in, rpn(keras.layers.Activation("relu")(x)))


def _values(seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {"conv1": [rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4)],
            "bn_conv1": [rng.normal(size=4) for _ in range(3)] + [rng.uniform(1, 2, 4)],
            "rpn_model": [rng.normal(size=(1, 1, 4, 3)), rng.normal(size=3),
                          rng.normal(size=(1, 1, 3, 2)), rng.normal(size=2)]}


def _matterport_file(path, values, wrapped: bool = True, extra_layer: bool = True) -> None:
    """A file in Matterport's layout: chunked layer_names, str names, model_weights wrapper."""
    names = {"conv1": ["conv1/kernel:0", "conv1/bias:0"],
             "bn_conv1": [f"bn_conv1/{n}:0" for n in ("gamma", "beta", "moving_mean",
                                                      "moving_variance")],
             "rpn_model": ["rpn_conv_shared/kernel:0", "rpn_conv_shared/bias:0",
                           "rpn_class_raw/kernel:0", "rpn_class_raw/bias:0"]}
    layers = ["input_1", "conv1", "bn_conv1", "activation_1", "rpn_model"]
    if extra_layer:
        layers.append("res4g_branch2a")
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrapped else f
        root.attrs["layer_names0"] = np.array([n.encode() for n in layers[:3]])
        root.attrs["layer_names1"] = np.array(layers[3:], dtype=h5py.string_dtype())
        for layer in layers:
            group = root.create_group(layer)
            group.attrs["weight_names"] = np.array([n.encode() for n in names.get(layer, [])],
                                                   dtype="S64")
            for name, value in zip(names.get(layer, []), values.get(layer, [])):
                group.create_dataset(name, data=value.astype(np.float32))
        if extra_layer:
            root["res4g_branch2a"].attrs["weight_names"] = np.array([b"res4g_branch2a/kernel:0"])
            root["res4g_branch2a"].create_dataset("res4g_branch2a/kernel:0", data=np.ones(3))


def _model_values(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {"conv1": model.get_layer("conv1").get_weights(),
            "bn_conv1": model.get_layer("bn_conv1").get_weights(),
            "rpn_model": model.get_layer("rpn_model").get_weights()}


def test_load_matterport_layout_by_name_with_exclude(tmp_path, caplog):
    values = _values(0)
    _matterport_file(tmp_path / "coco.h5", values)
    model = _small_model()
    before = model.get_layer("conv1").get_weights()
    with caplog.at_level(logging.WARNING, logger="kit.mrcnn.weights"):
        report = W.load_weights(model, tmp_path / "coco.h5", exclude=["conv1"])
    assert report["loaded"] == ["bn_conv1", "rpn_model"]
    assert report["excluded"] == ["conv1"]
    assert report["missing_in_model"] == ["res4g_branch2a"]
    assert report["missing_in_file"] == [] and report["shape_mismatch"] == []
    got = _model_values(model)
    for a, b in zip(got["conv1"], before):             # excluded: untouched
        np.testing.assert_array_equal(a, b)
    for key in ("bn_conv1", "rpn_model"):
        for a, b in zip(got[key], values[key]):
            np.testing.assert_array_equal(a, b.astype(np.float32))
    assert "ResNet101 file was loaded into a ResNet50" in caplog.text


def test_shape_mismatch_is_skipped_and_reported(tmp_path):
    values = _values(1)
    values["conv1"][0] = np.zeros((3, 3, 2, 5))       # 5 filters instead of 4
    _matterport_file(tmp_path / "bad.h5", values, wrapped=False, extra_layer=False)
    model = _small_model()
    before = model.get_layer("conv1").get_weights()[0]
    report = W.load_weights(model, tmp_path / "bad.h5")
    assert report["shape_mismatch"] == ["conv1: conv1/kernel:0 (3, 3, 2, 5) != (3, 3, 2, 4)"]
    np.testing.assert_array_equal(model.get_layer("conv1").get_weights()[0], before)
    assert report["loaded"] == ["bn_conv1", "rpn_model"]


def test_save_load_round_trip_is_bit_exact(tmp_path):
    source, target = _small_model(), _small_model()
    for layer_name, vals in _values(2).items():
        source.get_layer(layer_name).set_weights([v.astype(np.float32) for v in vals])
    path = tmp_path / "ckpt" / "mask_rcnn_x_0001.h5"
    W.save_weights(source, path)
    with h5py.File(path, "r") as f:                    # the legacy layout, readable by Keras 2
        assert [n.decode() for n in f.attrs["layer_names"]] == ["conv1", "bn_conv1",
                                                                "rpn_model"]
        assert f["rpn_model"].attrs["weight_names"][0] == b"rpn_conv_shared/kernel:0"
        assert "rpn_model/rpn_conv_shared/kernel:0" in f
    report = W.load_weights(target, path)
    assert report["loaded"] == ["conv1", "bn_conv1", "rpn_model"]
    for a, b in zip(target.get_weights(), source.get_weights()):
        assert a.tobytes() == b.tobytes()
    assert not list(path.parent.glob(".*.tmp"))        # atomic write left no temp file
    topological = W.load_weights(_small_model(), path, by_name=False)
    assert topological["loaded"] == ["conv1", "bn_conv1", "rpn_model"]


def test_chunked_attribute_writer_round_trip(tmp_path):
    names = [f"layer_with_a_rather_long_name_{i:05d}" for i in range(3000)]
    with h5py.File(tmp_path / "n.h5", "w") as f:
        W._write_names(f, "layer_names", names)
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
        assert W._read_names(f, "layer_names") == names


def test_resnet101_file_into_resnet50_reports_skipped_blocks(tmp_path, caplog):
    def backbone(arch: str) -> keras.Model:
        image = keras.Input((64, 64, 3))
        return keras.Model(image, resnet_graph(image, arch)[-1])

    r101 = backbone("resnet101")
    W.save_weights(r101, tmp_path / "r101.h5")
    r50 = backbone("resnet50")
    with caplog.at_level(logging.WARNING, logger="kit.mrcnn.weights"):
        report = W.load_weights(r50, tmp_path / "r101.h5")
    missing = set(report["missing_in_model"])
    assert {"res4g_branch2a", "bn4w_branch2c", "res4v_branch2b"} <= missing
    assert len(missing) == 17 * 6                    # blocks g..w, 3 convs + 3 BNs each
    assert "res4f_branch2c" in report["loaded"] and not report["missing_in_file"]
    np.testing.assert_array_equal(r50.get_layer("res4f_branch2c").get_weights()[0],
                                  r101.get_layer("res4f_branch2c").get_weights()[0])
    assert "only res4a..f were filled" in caplog.text


def test_imagenet_names_are_mapped():
    assert W.imagenet_name("conv1_conv") == "conv1"
    assert W.imagenet_name("conv1_bn") == "bn_conv1"
    assert W.imagenet_name("conv2_block1_0_conv") == "res2a_branch1"
    assert W.imagenet_name("conv4_block23_3_bn") == "bn4w_branch2c"
    assert W.imagenet_name("conv3_block2_2_conv") == "res3b_branch2b"
    assert W.imagenet_name("fpn_c5p5") == "fpn_c5p5"


def test_kit_layers_are_reported_as_new_not_missing(tmp_path):
    _matterport_file(tmp_path / "coco.h5", _values(3))
    plain = W.load_weights(_small_model(), tmp_path / "coco.h5")
    base = _small_model()                                # + the kit's own head on top
    head = keras.layers.Dense(3, name="kit_image_logits")(
        keras.layers.GlobalAveragePooling2D(name="kit_image_pool")(base.output))
    with_head = W.load_weights(keras.Model(base.input, [base.output, head]), tmp_path / "coco.h5")
    assert with_head["new_in_model"] == ["kit_image_logits"] and plain["new_in_model"] == []
    assert {k: v for k, v in with_head.items() if k != "new_in_model"} == \
        {k: v for k, v in plain.items() if k != "new_in_model"}
    assert plain["missing_in_file"] == [] and plain["loaded"] == ["conv1", "bn_conv1", "rpn_model"]
