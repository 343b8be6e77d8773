"""Mask R-CNN inference latency (batch 1, random weights) per image size; one JSON object.

    python bench/model.py --sizes 256 512 --repeats 5 [--backbone resnet50] [--proposals 1000]

For each size: graph build time, first call (tracing) time, then ``repeats`` timed
``detect(..., masks=False)`` and ``detect(...)`` calls (median, min, max seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4)}


def bench(size: int, repeats: int, backbone: str, proposals: int,
          mixed_precision: bool = False) -> dict:
    import numpy as np

    from kit.mrcnn.config import Config
    from kit.mrcnn.model import MaskRCNN

    class BenchConfig(Config):
        NAME = "bench"
        NUM_CLASSES = 2
        IMAGES_PER_GPU = 1
        BACKBONE = backbone
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = size
        POST_NMS_ROIS_INFERENCE = proposals
        DETECTION_MIN_CONFIDENCE = 0.0          # keep the detection/mask path fully busy
        MIXED_PRECISION = mixed_precision

    start = time.perf_counter()
    model = MaskRCNN("inference", BenchConfig(), tempfile.mkdtemp())
    build = time.perf_counter() - start
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    start = time.perf_counter()
    model.detect([image], masks=False)
    model.detect([image])
    first = time.perf_counter() - start
    return {"size": size, "build_s": round(build, 2), "first_calls_s": round(first, 2),
            "boxes_only": _timed(lambda: model.detect([image], masks=False), repeats),
            "with_masks": _timed(lambda: model.detect([image]), repeats)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"])
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--mixed-precision", action="store_true",
                        help="float16 convolutions (graph layers stay float32)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    results = [bench(s, args.repeats, args.backbone, args.proposals, args.mixed_precision)
               for s in args.sizes]
    print(json.dumps({
        "benchmark": "mrcnn_inference_latency", "backbone": args.backbone, "batch": 1,
        "proposals": args.proposals, "repeats": args.repeats,
        "mixed_precision": args.mixed_precision,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpus": os.cpu_count(), "machine": platform.machine(), "tensorflow": tf.__version__,
        "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
