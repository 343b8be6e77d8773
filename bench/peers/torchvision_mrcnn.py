"""torchvision's Mask R-CNN (ResNet-50 FPN) on the same work as bench/model.py and
bench/train_step.py; prints ONE JSON object. Runs in the peer venv (.bench/venv), not in .venv.

Set-up matched to our Matterport defaults: random weights (no download), 2 classes, square
SxS input kept at S (min_size = max_size = S), 1000 proposals after RPN NMS at inference and
2000 in training, 100 detections with score floor 0 (the detection and mask paths fully busy),
200 sampled ROIs per image at 33% positives, 256 RPN anchors per image, frozen BatchNorm in
the backbone (FrozenBatchNorm2d, Matterport's TRAIN_BN=False), every layer trainable, SGD with
momentum 0.9, weight decay 1e-4 and gradient clipping at norm 5 (as ours).

Usage: .bench/venv/bin/python bench/peers/torchvision_mrcnn.py [--sizes 256 512] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def _stats(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4)}


def build(size: int, proposals: int):
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 5)
    return MaskRCNN(backbone, num_classes=2, min_size=size, max_size=size,
                    rpn_post_nms_top_n_test=proposals, rpn_post_nms_top_n_train=2000,
                    rpn_batch_size_per_image=256, box_batch_size_per_image=200,
                    box_positive_fraction=0.33, box_detections_per_img=100,
                    box_score_thresh=0.0)


def boxes_batch(size: int, batch: int, seed: int):
    """Grey images with 1-3 bright rectangles, targets in torchvision's format."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        image = torch.full((3, size, size), 60 / 255)
        n = int(torch.randint(1, 4, (1,), generator=g))
        boxes = torch.zeros((n, 4))
        masks = torch.zeros((n, size, size), dtype=torch.uint8)
        for i in range(n):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
            image[:, y:y + h, x:x + w] = 190 / 255
            boxes[i] = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
            masks[i, y:y + h, x:x + w] = 1
        images.append(image)
        targets.append({"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64),
                        "masks": masks})
    return images, targets


def bench_inference(size: int, repeats: int, proposals: int) -> dict:
    import torch

    start = time.perf_counter()
    model = build(size, proposals).eval()
    build_s = time.perf_counter() - start
    image = torch.randint(0, 255, (3, size, size), generator=torch.Generator().manual_seed(0))
    image = image.float() / 255
    with torch.inference_mode():
        start = time.perf_counter()
        out = model([image])
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model([image])
            times.append(time.perf_counter() - start)
    return {"size": size, "build_s": round(build_s, 2), "first_call_s": round(first, 2),
            "detections": int(out[0]["boxes"].shape[0]), "with_masks": _stats(times)}


def bench_train(size: int, batch: int, steps: int) -> dict:
    import torch

    model = build(size, 1000).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)  # ours: L2 1e-4
    batches = [boxes_batch(size, batch, seed) for seed in range(steps + 1)]

    def step(images, targets) -> float:
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return float(loss.detach())

    start = time.perf_counter()
    step(*batches[0])
    first = time.perf_counter() - start
    times, losses = [], []
    for images, targets in batches[1:]:
        start = time.perf_counter()
        losses.append(step(images, targets))
        times.append(time.perf_counter() - start)
    return {"size": size, "batch": batch, "first_step_s": round(first, 2),
            "loss_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
            "step": _stats(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    import torch
    import torchvision

    torch.manual_seed(0)
    result = {
        "peer": "torchvision maskrcnn (resnet50 fpn)", "torch": torch.__version__,
        "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "device": "CPU", "proposals": args.proposals,
        "inference": [bench_inference(s, args.repeats, args.proposals) for s in args.sizes]}
    if not args.skip_train:
        result["train"] = [bench_train(s, args.batch, args.steps) for s in args.sizes]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
