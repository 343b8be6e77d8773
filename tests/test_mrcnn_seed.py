"""config.SEED: the same seed gives the same batches, losses and weights (thread workers too)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")

from test_mrcnn_training import PRELUDE, REPO  # noqa: E402

# Three 2-step trainings in one fresh process: seeds 5, 5, 6. Op determinism is process-wide
# (and needed: CPU kernels are not bit-reproducible without it), hence the subprocess.
TRAIN_TWICE = """
import hashlib
import numpy as np
import tensorflow as tf
import keras
tf.config.experimental.enable_op_determinism()
from kit.mrcnn.augment import albumentations_augmentation
from kit.mrcnn.model import MaskRCNN
from test_mrcnn_training import _boxes_dataset, _model_config

ds = _boxes_dataset([[(10, 10, 40, 30)], [], [(30, 8, 60, 40), (4, 40, 20, 60)], [],
                     [(20, 20, 44, 50)], []])
for i, cls in enumerate([0, 2, 0, -1, 0, 1]):
    ds.image_info[i]["image_class"] = cls

def run(seed, folder):
    keras.utils.set_random_seed(seed)          # weight init: the caller's job
    config = _model_config(SEED=seed, STEPS_PER_EPOCH=2, IMAGES_PER_GPU=2,
                           PROPOSALS_WITH_GT=True, IMAGE_CLASSES=3)
    model = MaskRCNN("training", config, folder)
    targets = model.keras_model.get_layer("proposal_targets")
    assert targets.seed == seed and targets.proposals_with_gt
    history = []
    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            history.append({k: float(v) for k, v in logs.items()})
    np.random.seed(seed + 100)                 # global NumPy state must not matter
    model.train(ds, None, 0.01, 1, "heads", augmentation=albumentations_augmentation(),
                workers=2, custom_callbacks=[Record()])
    weights = b"".join(w.numpy().tobytes() for w in model.keras_model.weights)
    return {"logs": history, "weights": hashlib.sha256(weights).hexdigest()}

print(json.dumps([run(5, sys.argv[1] + "/a"), run(5, sys.argv[1] + "/b"),
                  run(6, sys.argv[1] + "/c")]))
"""


@pytest.mark.slow
def test_same_seed_same_losses_and_weights_other_seed_other(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PRELUDE + TRAIN_TWICE, str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again, other = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(first["logs"]) == 2 and "kit_image_class_loss" in first["logs"][0]
    assert first["logs"] == again["logs"]
    assert first["weights"] == again["weights"]
    assert first["logs"] != other["logs"] and first["weights"] != other["weights"]
