"""Seconds per Mask R-CNN training step (default: ResNet-50, 256 px, batch 2, layers=all, CPU).

Prints ONE JSON object on stdout. The data pipeline (load_image_gt + RPN targets) is timed
separately from the step itself, which is timed on batches prepared beforehand.

Usage: python bench/train_step.py [--backbone resnet50] [--size 256] [--batch 2] [--steps 5]
                                  [--layers all]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.mrcnn import utils  # noqa: E402
from kit.mrcnn.config import Config  # noqa: E402


class BoxImages(utils.Dataset):
    """Grey square images with 0-3 bright rectangles (seeded)."""

    def __init__(self, count: int, size: int, seed: int = 0):
        super().__init__()
        self.add_class("bench", 1, "opacity")
        rng = np.random.default_rng(seed)
        for i in range(count):
            boxes = []
            for _ in range(rng.integers(0, 4)):
                y, x = rng.integers(0, size // 2, 2)
                h, w = rng.integers(size // 8, size // 2, 2)
                boxes.append((int(y), int(x), int(y + h), int(x + w)))
            self.add_image("bench", i, None, boxes=boxes, size=size)
        self.prepare()

    def load_image(self, image_id):
        info = self.image_info[image_id]
        image = np.full((info["size"], info["size"], 3), 60, np.uint8)
        for y1, x1, y2, x2 in info["boxes"]:
            image[y1:y2, x1:x2] = 190
        return image

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        mask = np.zeros((info["size"], info["size"], len(info["boxes"])), bool)
        for i, (y1, x1, y2, x2) in enumerate(info["boxes"]):
            mask[y1:y2, x1:x2, i] = True
        return mask, np.ones(len(info["boxes"]), np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", choices=("resnet50", "resnet101"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", default="all")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="float16 convolutions with dynamic loss scaling")
    args = parser.parse_args()

    import tensorflow as tf

    from kit.mrcnn.data import DataGenerator
    from kit.mrcnn.model import MaskRCNN
    from kit.mrcnn.training import layer_regex, make_optimizer

    class BenchConfig(Config):
        NAME = "bench"
        NUM_CLASSES = 2
        BACKBONE = args.backbone
        IMAGES_PER_GPU = args.batch                     # per replica (MirroredStrategy on >1 GPU)
        GPU_COUNT = max(1, len(tf.config.list_physical_devices("GPU")))
        MIXED_PRECISION = args.mixed_precision
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = args.size
        RPN_ANCHOR_SCALES = tuple(max(4, s * args.size // 1024) for s in (32, 64, 128, 256, 512))

    config = BenchConfig()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = MaskRCNN("training", config, tmp)
    build_s = time.perf_counter() - start
    model.set_trainable(layer_regex(args.layers))
    model.keras_model.compile(optimizer=make_optimizer(config, 1e-3), jit_compile=False)
    model.keras_model.optimizer.build(model.keras_model.trainable_variables)   # as training does

    gen = DataGenerator(BoxImages(args.batch * (args.steps + 2), args.size), config,
                        shuffle=False)
    start = time.perf_counter()
    batches = [gen[i][0] for i in range(len(gen))]
    data_s = (time.perf_counter() - start) / len(batches)

    step = model.keras_model.train_on_batch
    start = time.perf_counter()
    step(batches[0], return_dict=True)              # traces the graph
    first_s = time.perf_counter() - start
    times, losses = [], []
    for batch in batches[1:1 + args.steps]:
        start = time.perf_counter()
        logs = step(batch, return_dict=True)
        times.append(time.perf_counter() - start)
        losses.append(float(logs["loss"]))
    print(json.dumps({
        "backbone": args.backbone, "image_size": args.size, "batch": args.batch,
        "layers": args.layers, "steps_timed": len(times), "replicas": config.GPU_COUNT,
        "mixed_precision": args.mixed_precision,
        "seconds_per_step": round(float(np.median(times)), 3),
        "seconds_per_step_min": round(float(np.min(times)), 3),
        "first_step_seconds_incl_trace": round(first_s, 2),
        "data_seconds_per_batch": round(data_s, 4),
        "build_seconds": round(build_s, 2),
        "loss_finite": bool(np.all(np.isfinite(losses))),
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_threads": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
