"""Which features of a trained run tell opacity images apart? A linear probe per layer.

Usage: python bench/image_features.py --run runs/<run> [--layers res5c_out fpn_p2 ...]

For each layer, every train and val image of the run is passed through the run's best checkpoint,
the layer's output is average and max pooled over space, and a logistic regression (numpy,
standardised features, full-batch gradient descent, at each L2 strength) is fitted on the train
images to predict "the image has a box". Prints one JSON object: per layer and L2 strength the
train and val ROC AUC, plus the run's own classifier head for comparison (kit_image_pool is
the head's input). Not in `make bench`'s default list: it needs a trained run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYERS = ("res5c_out", "res4f_out", "res3d_out", "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5",
          "kit_image_pool")


def roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """kit.score.metric.roc_auc (ties one half); None when a split lacks a class."""
    from kit.score.metric import roc_auc as auc

    if y.all() or not y.any():
        return None
    return auc(y, s)


def logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 2000,
             lr: float = 0.1) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Fit on standardised x; returns (w, b, mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        w -= lr * (z.T @ (p - y) + l2 * w) / len(y)
        b -= lr * float((p - y).mean())
    return w, b, mean, std


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a trained run folder")
    ap.add_argument("--layers", nargs="+", default=list(LAYERS))
    ap.add_argument("--l2", nargs="+", type=float, default=[1.0, 30.0])
    args = ap.parse_args(argv)

    import keras
    import pandas as pd
    import tensorflow as tf

    from kit.data.prepare import Cache, default_cache_dir
    from kit.config import RunConfig
    from kit.data.prepare import as_rgb
    from kit.data.labels import read_labels
    from kit.mrcnn import molding
    from kit.infer.predict import load_inference_model

    run = Path(args.run)
    cfg = RunConfig.load(run / "config.json")
    with contextlib.redirect_stdout(sys.stderr):      # stdout carries only the JSON
        model = load_inference_model(run, "best")
    km = model.keras_model
    names = [n for n in args.layers if n in {layer.name for layer in km.layers}]
    extractor = keras.Model(km.inputs[0], [km.get_layer(n).output for n in names])
    forward = tf.function(lambda x: extractor(x, training=False))
    cache = Cache(default_cache_dir(cfg.data_dir, cfg.image_size))
    labels = read_labels(Path(cfg.data_dir) / "stage_2_train_labels.csv")
    positive = labels.groupby("patientId").Target.max()

    def pooled(ids: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {n: [] for n in names}
        for start in range(0, len(ids), 16):
            chunk = [as_rgb(cache.load(pid)) for pid in ids[start:start + 16]]
            molded, _, _ = molding.mold_inputs(chunk, model.config)
            outs = forward(tf.constant(molded))
            for n, o in zip(names, outs if len(names) > 1 else [outs]):
                o = np.asarray(o, np.float64)
                out[n].append(o if o.ndim == 2 else np.concatenate([o.mean((1, 2)), o.max((1, 2))], 1))
        return {n: np.concatenate(v) for n, v in out.items()}

    split = {s: pd.read_csv(run / f"{s}_ids.csv").patientId.astype(str).tolist()
             for s in ("train", "val")}
    feats = {s: pooled(ids) for s, ids in split.items()}
    y = {s: positive.loc[ids].to_numpy().astype(bool) for s, ids in split.items()}
    result: dict = {"run": str(run), "images": {s: len(v) for s, v in split.items()}, "layers": {}}
    for n in names:
        rows = {}
        for l2 in args.l2:
            w, b, mean, std = logistic(feats["train"][n], y["train"].astype(float), l2)
            auc = {s: roc_auc(y[s], ((feats[s][n] - mean) / std) @ w + b)
                   for s in ("train", "val")}
            auc = {s: None if v is None else round(v, 4) for s, v in auc.items()}
            rows[f"l2={l2:g}"] = auc
        result["layers"][n] = {"dim": int(feats["train"][n].shape[1]), **rows}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
