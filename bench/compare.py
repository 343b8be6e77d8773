"""Our Mask R-CNN vs torchvision's maskrcnn_resnet50_fpn on the same work; ONE JSON object.

Runs, one after the other on the same machine, each in a fresh process:
  ours:   bench/model.py (inference, batch 1) and bench/train_step.py (training step, batch 2)
  theirs: bench/peers/torchvision_mrcnn.py in the peer venv (.bench/venv, `make bench-peers`)
at every size, with 1000 proposals, 100 detections, random weights, 2 classes, frozen BN,
and reports the ratios ours/theirs of the median times (<= 1.0: we are at least as fast).
Without the peer venv it prints {"skipped": ...} and exits 0.

Usage: python bench/compare.py [--sizes 256 512] [--repeats 5] [--steps 5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".bench" / "venv" / "bin" / "python"   # made by `make bench-peers`


def _json(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    if not PEER_PYTHON.is_file():
        print(json.dumps({"skipped": f"no peer venv at {PEER_PYTHON}: run `make bench-peers`"}))
        return 0
    sizes = [str(s) for s in args.sizes]
    theirs = _json([str(PEER_PYTHON), "bench/peers/torchvision_mrcnn.py", "--sizes", *sizes,
                    "--repeats", str(args.repeats), "--steps", str(args.steps)])
    ours_inf = _json([sys.executable, "bench/model.py", "--sizes", *sizes,
                      "--repeats", str(args.repeats), "--proposals", "1000"])
    ours_train = [_json([sys.executable, "bench/train_step.py", "--size", s, "--batch", "2",
                         "--steps", str(args.steps)]) for s in sizes]
    print(json.dumps({"benchmark": "mrcnn_vs_torchvision",
                      "ratios_ours_over_theirs": ratios(ours_inf, ours_train, theirs),
                      "ours": {"inference": ours_inf, "train": ours_train},
                      "torchvision": theirs}))
    return 0


def ratios(ours_inf: dict, ours_train: list[dict], theirs: dict) -> dict:
    """Per size: median seconds of both and ours/theirs for inference and the training step."""
    out = {}
    for ours_i, their_i, ours_t, their_t in zip(
            ours_inf["results"], theirs["inference"], ours_train, theirs["train"]):
        if not ours_i["size"] == their_i["size"] == ours_t["image_size"] == their_t["size"]:
            raise ValueError("ours and theirs were measured at different sizes")
        out[str(ours_i["size"])] = {
            "inference_ours_s": ours_i["with_masks"]["median_s"],
            "inference_theirs_s": their_i["with_masks"]["median_s"],
            "inference_ratio": round(ours_i["with_masks"]["median_s"]
                                     / their_i["with_masks"]["median_s"], 3),
            "train_step_ours_s": ours_t["seconds_per_step"],
            "train_step_theirs_s": their_t["step"]["median_s"],
            "train_step_ratio": round(ours_t["seconds_per_step"]
                                      / their_t["step"]["median_s"], 3)}
    return out


if __name__ == "__main__":
    sys.exit(main())
