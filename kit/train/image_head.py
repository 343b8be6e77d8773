"""Refit the image-level classifier on the finished detector's features.

The head (kit.mrcnn.heads.image_class_graph) trains in the same steps as the detector, but reads
features that change every step: on the CPU demo, trained from scratch, it ends with a
validation ROC AUC of about 0.78 where a linear fit on the final features reaches 0.99. So once
training is over, the head's three weighted layers (kit_image_norm, kit_image_fc,
kit_image_logits) are fitted again, warm-started, on the pooled FPN features of a seeded subset of
the training images (each also flipped, as flip TTA sees it) with the rest of the network frozen,
and the checkpoint is rewritten with them. Validation images are never used, so tune and the
reported AUC stay held out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

HEAD_LAYERS = ("kit_image_norm", "kit_image_fc", "kit_image_logits")
POOL_LAYER = "kit_image_pool"


def pick_ids(ids: Sequence[str], classes: dict[str, int], n: int, seed: int) -> list[str]:
    """Up to ``n`` (0: all) of ``ids`` that have an image class, drawn with ``seed`` and
    stratified by class (each class keeps its share), in the order of ``ids``."""
    labelled = [pid for pid in ids if classes.get(pid, -1) >= 0]
    if not n or n >= len(labelled):
        return labelled
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, pid in enumerate(labelled):
        by_class.setdefault(classes[pid], []).append(i)
    quota = {c: len(v) * n / len(labelled) for c, v in by_class.items()}
    take = {c: int(q) for c, q in quota.items()}
    for c in sorted(quota, key=lambda c: quota[c] - take[c], reverse=True)[:n - sum(take.values())]:
        take[c] += 1                                    # largest remainders get the rest
    keep = sorted(int(i) for c, v in by_class.items()
                  for i in rng.permutation(np.asarray(v))[:take[c]])
    return [labelled[i] for i in keep]


def pooled_features(infer_model, images: Sequence[np.ndarray], flip: bool = True,
                    batch: int = 16) -> np.ndarray:
    """The head's input (kit_image_pool, before LayerNorm) for each image, float32 [N, D]; with
    ``flip`` each image's horizontal flip follows it ([2N, D]: image, flipped, image, ...).
    Runs as one traced function on fixed-size batches (eager calls were 16x slower on a CPU)."""
    import keras
    import tensorflow as tf

    from kit.mrcnn import molding

    km = infer_model.keras_model
    extractor = keras.Model(km.inputs[0], km.get_layer(POOL_LAYER).output)
    run = tf.function(lambda x: extractor(x, training=False))
    views = [v for im in images for v in ((im, im[:, ::-1]) if flip else (im,))]
    out = []
    for start in range(0, len(views), batch):
        chunk = views[start:start + batch]
        molded, _, _ = molding.mold_inputs(chunk, infer_model.config)
        pad = batch - len(chunk)      # one batch shape: no retrace for the last, short batch
        if pad:
            molded = np.concatenate([molded, np.zeros((pad, *molded.shape[1:]), molded.dtype)])
        out.append(np.asarray(run(tf.constant(molded)), dtype=np.float32)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fit_head(infer_model, features: np.ndarray, labels: np.ndarray, seed: int,
             steps: int = 200, learning_rate: float = 1e-3) -> dict:
    """Fit the head's weighted layers of ``infer_model`` (in place, warm start) on pooled
    features -> labels (class indices): ``steps`` full-batch Adam steps. Returns the loss
    before and after and the training accuracy."""
    import keras
    import tensorflow as tf

    km = infer_model.keras_model
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    keras.utils.set_random_seed(seed)
    x = inp = keras.Input(shape=(features.shape[1],), name="kit_image_features")
    for name in HEAD_LAYERS:             # the model's own layers: fitting updates its weights
        x = km.get_layer(name)(x)
    head = keras.Model(inp, x)
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"], jit_compile=False)
    head.optimizer.build(head.trainable_variables)   # not inside the traced step (traced twice)
    before = float(head.evaluate(features, labels, batch_size=len(labels), verbose=0)[0])
    steps_ds = tf.data.Dataset.from_tensors((features, labels)).repeat(steps)
    head.fit(steps_ds, epochs=1, shuffle=False, verbose=0)   # one epoch: ``steps`` full batches
    after, accuracy = head.evaluate(features, labels, batch_size=len(labels), verbose=0)
    return {"loss_before": round(before, 4), "loss_after": round(float(after), 4),
            "train_accuracy": round(float(accuracy), 4), "steps": steps}


def refit_image_head(infer_model, weights: Path, ids: Sequence[str], classes: dict[str, int],
                     load_image: Callable[[str], np.ndarray], n: int, seed: int) -> dict | None:
    """Load ``weights`` into ``infer_model``, refit its image head on up to ``n`` (0: all)
    training images and rewrite ``weights`` atomically with the refitted head. Returns what was
    done (images, losses), or None when there is no labelled image or no head."""
    from kit.mrcnn.weights import save_weights

    km = infer_model.keras_model
    if POOL_LAYER not in {layer.name for layer in km.layers}:
        return None
    picked = pick_ids(ids, classes, n, seed)
    if not picked:
        return None
    infer_model.load_weights(str(weights), by_name=True)
    features = pooled_features(infer_model, [load_image(pid) for pid in picked], flip=True)
    labels = np.repeat([classes[pid] for pid in picked], 2)
    info = {"images": len(picked), **fit_head(infer_model, features, labels, seed)}
    save_weights(km, str(weights))
    return info
