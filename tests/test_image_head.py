"""Refitting the image-level head on the finished detector's features (kit.train.image_head)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from kit.train.image_head import HEAD_LAYERS, pick_ids


def test_pick_ids_keeps_labelled_images_stratified_and_seeded():
    ids = [f"p{i}" for i in range(12)]
    classes = {f"p{i}": i % 3 for i in range(10)}          # p10, p11 have no class
    assert pick_ids(ids, classes, 0, seed=0) == ids[:10]
    assert pick_ids(ids, classes, 50, seed=0) == ids[:10]
    six = pick_ids(ids, classes, 6, seed=0)
    assert len(six) == 6 and six == sorted(six, key=ids.index)
    counts = np.bincount([classes[p] for p in six], minlength=3)
    assert counts.tolist() == [2, 2, 2]          # shares 4:3:3 of 6 -> 2.4, 1.8, 1.8 -> 2, 2, 2
    assert pick_ids(ids, classes, 6, seed=0) == six
    assert any(pick_ids(ids, classes, 6, seed=s) != six for s in range(1, 6))
    five = pick_ids(ids, classes, 5, seed=1)    # 2.0, 1.5, 1.5: class 0 gets 2, one remainder
    assert np.bincount([classes[p] for p in five], minlength=3).tolist() in ([2, 2, 1], [2, 1, 2])
    assert pick_ids(ids, {}, 4, seed=0) == []


tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from kit.train.image_head import pooled_features, refit_image_head  # noqa: E402
from kit.mrcnn import weights as W  # noqa: E402
from kit.mrcnn.model import MaskRCNN  # noqa: E402
from test_mrcnn_training import _model_config  # noqa: E402


def _images(n, seed=0):
    """Bright square (class 0) on even images, none (class 2) on odd ones: a learnable split."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = rng.integers(20, 60, (64, 64), dtype=np.uint8)
        if i % 2 == 0:
            y, x = rng.integers(4, 30, 2)
            im[y:y + 24, x:x + 20] = 230
        out.append(np.repeat(im[..., None], 3, axis=-1))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    keras.utils.set_random_seed(2)
    return MaskRCNN("inference", _model_config(IMAGES_PER_GPU=2, IMAGE_CLASSES=3),
                    tmp_path_factory.mktemp("m"))


def test_pooled_features_follow_each_image_with_its_flip(model):
    images = _images(3)
    both = pooled_features(model, images, flip=True, batch=4)     # 6 views: 2 batches, padded
    plain = pooled_features(model, images, flip=False, batch=4)
    flipped = pooled_features(model, [im[:, ::-1] for im in images], flip=False, batch=4)
    assert both.shape == (6, plain.shape[1]) and both.dtype == np.float32
    np.testing.assert_allclose(both[0::2], plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1::2], flipped, rtol=1e-5, atol=1e-5)
    assert not np.allclose(plain, flipped)


def test_training_and_inference_graphs_hold_the_same_weighted_layers(tmp_path):
    """The refit rewrites a checkpoint from the inference model: it must lose nothing."""
    cfg = _model_config(IMAGES_PER_GPU=2, IMAGE_CLASSES=3)
    names = [{layer.name for layer in W._weighted_layers(MaskRCNN(mode, cfg, tmp_path).keras_model)}
             for mode in ("training", "inference")]
    assert names[0] == names[1] and set(HEAD_LAYERS) <= names[0]


def test_refit_rewrites_only_the_head_and_detect_uses_it(model, tmp_path):
    path = tmp_path / "best.h5"
    W.save_weights(model.keras_model, path)
    with h5py.File(path) as f:
        before = {name: [np.asarray(f[name][w]) for w in W._read_names(f[name], "weight_names")]
                  for name in W._read_names(f, "layer_names")}
    images = _images(8)
    ids = [f"i{k}" for k in range(8)]
    classes = {pid: 0 if k % 2 == 0 else 2 for k, pid in enumerate(ids)}
    probs_before = np.array([r["image_probs"][0] for r in model.detect(images, masks=False)])
    info = refit_image_head(model, path, ids, classes, dict(zip(ids, images)).__getitem__,
                            n=0, seed=0)
    assert info["images"] == 8 and info["loss_after"] < 0.5 * info["loss_before"]
    assert info["train_accuracy"] == 1.0
    with h5py.File(path) as f:
        after = {name: [np.asarray(f[name][w]) for w in W._read_names(f[name], "weight_names")]
                 for name in W._read_names(f, "layer_names")}
    assert after.keys() == before.keys()
    changed = {n for n in after if any(not np.array_equal(a, b)
                                       for a, b in zip(after[n], before[n]))}
    assert changed == set(HEAD_LAYERS)
    fresh = MaskRCNN("inference", model.config, tmp_path)
    fresh.load_weights(str(path), by_name=True)
    probs = np.array([r["image_probs"][0] for r in fresh.detect(images, masks=False)])
    assert probs[0::2].min() > probs[1::2].max()            # opacity images rank first
    assert not np.allclose(probs, probs_before)


def test_refit_without_a_head_or_labels_does_nothing(tmp_path):
    plain = MaskRCNN("inference", _model_config(IMAGES_PER_GPU=2), tmp_path)
    path = tmp_path / "w.h5"
    W.save_weights(plain.keras_model, path)
    stamp = path.stat().st_mtime_ns
    assert refit_image_head(plain, path, ["a"], {"a": 0}, lambda _: None, 0, 0) is None
    assert path.stat().st_mtime_ns == stamp
