"""``predict``: a run's model -> RAW detections (unthresholded), optionally with flip TTA.

Writes runs/<run>/raw_<split>.csv with columns patientId,score,x,y,w,h: top-left boxes in the
ORIGINAL 1024-px frame, every detection above the model's low confidence floor. Thresholds are
applied later, only by kit.postprocess (tuned by ``tune`` on raw_val.csv).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from kit import paths
from kit.config import RunConfig
from kit.errors import KitError
from kit.io import write_csv
from kit.runs import RAW_COLUMNS, resolve_run


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="latest", help="run folder, name or 'latest'")
    p.add_argument("--split", choices=["val", "test", "all"], default="all",
                   help="val: the run's held-out images; test: the stage-2 test images")
    p.add_argument("--tta", choices=["none", "flip"], default=None,
                   help="test-time augmentation (default: the run's config)")
    p.add_argument("--batch", type=int, default=None, help="images per detect() call")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR)


def run_predict(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, args.runs_dir)
    splits = ["val", "test"] if args.split == "all" else [args.split]
    model = load_inference_model(run)
    for split in splits:
        out = predict(run, split, tta=args.tta, batch=args.batch, model=model)
        print(f"wrote {out}")
    return 0


def xyxy_to_raw(rois: np.ndarray, side: int) -> np.ndarray:
    """Model boxes [y1, x1, y2, x2] in cache pixels -> [x, y, w, h] in the 1024-px frame."""
    rois = np.asarray(rois, dtype=np.float64).reshape(-1, 4)
    s = paths.IMAGE_SIZE / side
    return np.stack([rois[:, 1] * s, rois[:, 0] * s,
                     (rois[:, 3] - rois[:, 1]) * s, (rois[:, 2] - rois[:, 0]) * s], axis=1)


def unflip(rois: np.ndarray, side: int) -> np.ndarray:
    """Boxes found on a horizontally flipped image -> boxes on the original image."""
    rois = np.asarray(rois, dtype=np.float64).reshape(-1, 4).copy()
    rois[:, [1, 3]] = side - rois[:, [3, 1]]
    return rois


def fuse(rois_list: list[np.ndarray], scores_list: list[np.ndarray], side: int,
         iou_thr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Weighted box fusion of several detection sets of one image (y1x1y2x2 cache pixels)."""
    from ensemble_boxes import weighted_boxes_fusion

    boxes = [np.clip(r[:, [1, 0, 3, 2]] / side, 0, 1) for r in rois_list]
    if not sum(len(b) for b in boxes):
        return np.zeros((0, 4)), np.zeros(0)
    fused, scores, _ = weighted_boxes_fusion(
        [b.tolist() for b in boxes], [s.tolist() for s in scores_list],
        [[0] * len(s) for s in scores_list], iou_thr=iou_thr, skip_box_thr=0.0)
    fused = np.asarray(fused, dtype=np.float64).reshape(-1, 4) * side
    return fused[:, [1, 0, 3, 2]], np.asarray(scores, dtype=np.float64)


def load_inference_model(run: Path):
    from kit.mrcnn.model import MaskRCNN
    from kit.train import checkpoint_of

    cfg = RunConfig.load(run / "config.json")
    model = MaskRCNN(mode="inference", config=cfg.mrcnn_config(), model_dir=str(run))
    model.load_weights(str(checkpoint_of(run)), by_name=True)
    return model


def split_ids(run: Path, cfg: RunConfig, split: str, cache) -> list[str]:
    if split == "val":
        path = run / "val_ids.csv"
        if not path.is_file():
            raise KitError(f"{path} is missing: the run was not trained by this kit")
        return pd.read_csv(path).patientId.astype(str).tolist()
    return cache.ids("test")


def predict(run: Path, split: str, tta: str | None = None, batch: int | None = None,
            model=None) -> Path:
    """Detect on every image of ``split`` and write raw_<split>.csv; returns its path."""
    from kit.cache import prepare
    from kit.dataset import as_rgb

    cfg = RunConfig.load(run / "config.json")
    tta = tta or cfg.tta
    cache = prepare(Path(cfg.data_dir), cfg.image_size, splits=(split if split == "test"
                                                                 else "train",))
    ids = split_ids(run, cfg, split, cache)
    model = model or load_inference_model(run)
    batch = batch or model.config.BATCH_SIZE
    side = cache.size
    rows: list[pd.DataFrame] = []
    start = time.time()
    for i in tqdm(range(0, len(ids), batch), desc=f"predict {split}", unit="batch"):
        chunk = ids[i:i + batch]
        images = [as_rgb(cache.load(pid)) for pid in chunk]
        found = model.detect(images, masks=False)
        flipped = model.detect([im[:, ::-1] for im in images], masks=False) if tta == "flip" \
            else [None] * len(chunk)
        for pid, r, f in zip(chunk, found, flipped):
            rois, scores = np.asarray(r["rois"]), np.asarray(r["scores"], dtype=np.float64)
            if f is not None:
                rois, scores = fuse([rois, unflip(f["rois"], side)],
                                    [scores, np.asarray(f["scores"], dtype=np.float64)], side)
            xywh = xyxy_to_raw(rois, side)
            rows.append(pd.DataFrame({"patientId": pid, "score": scores, "x": xywh[:, 0],
                                      "y": xywh[:, 1], "w": xywh[:, 2], "h": xywh[:, 3]}))
    elapsed = time.time() - start
    raw = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=RAW_COLUMNS)
    raw = raw[(raw.w > 0) & (raw.h > 0)][RAW_COLUMNS].round({"score": 5, "x": 1, "y": 1, "w": 1, "h": 1})
    out = run / f"raw_{split}.csv"
    write_csv(out, raw)
    print(f"predict {split}: {len(ids)} images, {len(raw)} raw detections, "
          f"{len(ids) / max(elapsed, 1e-9):.1f} images/s (tta={tta})")
    return out
