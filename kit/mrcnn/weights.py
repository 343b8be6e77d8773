"""Weights in the Keras-2 legacy HDF5 layout: load by name with a report, save.

Layout (Matterport's mask_rcnn_coco.h5, keras.applications files, our checkpoints): the root
(or a ``model_weights`` group of a full-model save) has attribute ``layer_names`` (possibly
chunked as layer_names0, layer_names1, ...; bytes or str); each layer is a group with attribute
``weight_names`` like ``conv1/kernel:0`` and one dataset per name; a nested model (rpn_model) is
one group whose weight_names are ``rpn_conv_shared/kernel:0`` ... Weights pair up in order
(kernel, bias / gamma, beta, moving_mean, moving_variance), with shape checks.
Nothing here downloads: the published files (COCO, ImageNet) are fetched and checked by the
``weights`` command (kit.data.weights), which also tells train where they are.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable

import h5py
import keras
import numpy as np

from kit.io import atomic_open

log = logging.getLogger(__name__)

_ATTR_LIMIT = 64512   # HDF5 object header limit: longer attributes are chunked (Keras 2 rule)
KIT_PREFIX = "kit_"   # the kit's own layers (never in a Matterport file)


# ----------------------------------------------------------------------------- file layout
def _read_names(group: h5py.Group, name: str) -> list[str]:
    """A (possibly chunked) string-list attribute as str."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _write_names(group: h5py.Group, name: str, values: list[str]) -> None:
    """Write a string list attribute as bytes, chunked like Keras 2 when it is too big."""
    data = np.array([v.encode("utf8") for v in values])
    chunks = 1
    while data.nbytes / chunks > _ATTR_LIMIT:
        chunks += 1
    if chunks == 1:
        group.attrs[name] = data
        return
    for i, part in enumerate(np.array_split(data, chunks)):
        group.attrs[f"{name}{i}"] = part


def _layer_weights(layer: keras.layers.Layer) -> list[tuple[str, keras.Variable]]:
    """(legacy weight name, variable) pairs of a layer in Keras order; nested models flatten."""
    if isinstance(layer, keras.Model):
        return [pair for sub in layer.layers for pair in _layer_weights(sub)]
    return [(f"{layer.name}/{v.name}:0", v) for v in layer.weights]


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights]


# ------------------------------------------------------------------------------- load/save
def load_weights(keras_model: keras.Model, path: str | os.PathLike, by_name: bool = True,
                 exclude: Iterable[str] | None = None,
                 rename: Callable[[str], str] | None = None) -> dict[str, list]:
    """Load a legacy HDF5 weight file into ``keras_model``; returns and logs a report.

    by_name: file layer groups go to the model layer of the same name (``rename`` maps file
    names first; keras.applications files, recognised by ``conv1_conv``, get imagenet_name
    automatically); else both lists of layers with weights pair up in order. ``exclude``: layer names (of the model) not to load.
    A layer whose weight count or shapes differ is skipped whole and listed.
    Report keys: loaded, excluded, missing_in_model (file layers with no model layer),
    missing_in_file (model layers with weights the file lacks), shape_mismatch
    (``"layer: weight file-shape != model-shape"``), new_in_model (the kit's own ``kit_*``
    layers the file lacks, e.g. the image head vs. a Matterport file: expected, not a warning,
    and kept out of missing_in_file so a Matterport file reports the same with or without them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    exclude = set(exclude or ())
    report: dict[str, list] = {k: [] for k in ("loaded", "excluded", "missing_in_model",
                                               "missing_in_file", "shape_mismatch",
                                               "new_in_model")}
    model_layers = {layer.name: layer for layer in _weighted_layers(keras_model)}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        file_layers = [n for n in _read_names(root, "layer_names")
                       if _read_names(root[n], "weight_names")]
        if rename is None and "conv1_conv" in file_layers:
            log.info("weights %s: keras.applications names, mapped to Matterport's", path.name)
            rename = imagenet_name
        if by_name:
            pairs = []
            for name in file_layers:
                target = rename(name) if rename else name
                if target in model_layers:
                    pairs.append((name, model_layers[target]))
                else:
                    report["missing_in_model"].append(name)
        else:
            ordered = list(model_layers.values())
            if len(ordered) != len(file_layers):
                raise ValueError(f"{path}: {len(file_layers)} layers with weights in the file, "
                                 f"{len(ordered)} in the model; use by_name=True")
            pairs = list(zip(file_layers, ordered))
        seen = set()
        for file_name, layer in pairs:
            seen.add(layer.name)
            if layer.name in exclude:
                report["excluded"].append(layer.name)
                continue
            group = root[file_name]
            values = [np.asarray(group[w]) for w in _read_names(group, "weight_names")]
            targets = _layer_weights(layer)
            problem = _mismatch(values, targets)
            if problem:
                report["shape_mismatch"].append(f"{layer.name}: {problem}")
                continue
            for value, (_, var) in zip(values, targets):
                var.assign(value)
            report["loaded"].append(layer.name)
    unseen = [n for n in model_layers if n not in seen]
    report["missing_in_file"] = [n for n in unseen if not n.startswith(KIT_PREFIX)]
    report["new_in_model"] = [n for n in unseen if n.startswith(KIT_PREFIX)]
    _log_report(path, report)
    return report


def _mismatch(values: list[np.ndarray], targets: list) -> str | None:
    if len(values) != len(targets):
        return f"{len(values)} weights in the file, {len(targets)} in the model"
    for value, (name, var) in zip(values, targets):
        if tuple(value.shape) != tuple(var.shape):
            return f"{name} {tuple(value.shape)} != {tuple(var.shape)}"
    return None


def _log_report(path: Path, report: dict[str, list]) -> None:
    log.info("weights %s: %d layers loaded, %d excluded", path.name, len(report["loaded"]),
             len(report["excluded"]))
    if report["new_in_model"]:
        log.info("weights %s: the kit's own layers keep their initial weights: %s", path.name,
                 ", ".join(report["new_in_model"]))
    for key in ("missing_in_model", "shape_mismatch", "missing_in_file"):
        if report[key]:
            names = report[key]
            log.warning("weights %s: %d %s (NOT loaded): %s%s", path.name, len(names),
                        key.replace("_", " "), ", ".join(names[:8]),
                        " ..." if len(names) > 8 else "")
    if any(re.fullmatch(r"res4[g-w]_branch2a", n) for n in report["missing_in_model"]):
        log.warning("weights %s: stage-4 blocks g..w are not in the model: a ResNet101 file "
                    "was loaded into a ResNet50 model, only res4a..f were filled", path.name)


def save_weights(keras_model: keras.Model, path: str | os.PathLike) -> None:
    """Write every layer with weights in the legacy layout, atomically (temp + rename)."""
    with atomic_open(path, "wb") as fh, h5py.File(fh, "w") as f:
        layers = _weighted_layers(keras_model)
        _write_names(f, "layer_names", [layer.name for layer in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        for layer in layers:
            group = f.create_group(layer.name)
            pairs = _layer_weights(layer)
            _write_names(group, "weight_names", [name for name, _ in pairs])
            for name, var in pairs:
                group.create_dataset(name, data=np.asarray(var.numpy()))


# ------------------------------------------------------------------ keras.applications names
def imagenet_name(name: str) -> str:
    """keras.applications ResNet layer name -> Matterport's (conv2_block1_1_conv -> res2a_branch2a)."""
    if name in ("conv1_conv", "conv1_bn"):
        return "conv1" if name == "conv1_conv" else "bn_conv1"
    m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
    if not m:
        return name
    stage, block, branch, kind = m.groups()
    letter = chr(ord("a") + int(block) - 1)
    branch = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}[branch]
    return f"{'res' if kind == 'conv' else 'bn'}{stage}{letter}_branch{branch}"
