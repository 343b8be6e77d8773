"""bench/image_features.py: its AUC and logistic probe (the run-level probe is exercised in
test_train_selection on a trained tiny run)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def image_features():
    spec = importlib.util.spec_from_file_location("bench_image_features",
                                                  ROOT / "bench" / "image_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roc_auc_counts_pairs_and_half_ties():
    auc = image_features().roc_auc
    y = np.array([True, True, False, False, False])
    # positives 0.9, 0.4; negatives 0.4, 0.2, 0.1: 0.9 beats 3, 0.4 beats 2 and ties 1 -> 5.5 / 6
    assert auc(y, np.array([0.9, 0.4, 0.4, 0.2, 0.1])) == pytest.approx(5.5 / 6)
    assert auc(y, np.array([0.0, 0.1, 0.5, 0.6, 0.7])) == 0.0
    assert auc(np.array([True, True]), np.array([0.2, 0.3])) is None


def test_logistic_probe_separates_a_linear_split_and_ignores_noise():
    m = image_features()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x[:, 2] > 0.3
    w, b, mean, std = m.logistic(x, y.astype(float), l2=1.0)
    assert m.roc_auc(y, ((x - mean) / std) @ w + b) > 0.99
    assert np.argmax(np.abs(w)) == 2
    noise = rng.normal(size=(200, 5))
    w, b, mean, std = m.logistic(noise, y.astype(float), l2=30.0)
    held = rng.normal(size=(200, 5))
    assert abs(m.roc_auc(y, ((held - mean) / std) @ w + b) - 0.5) < 0.15
