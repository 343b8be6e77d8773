"""``predict``: a run's model -> RAW detections (unthresholded), optionally with flip TTA.

Writes runs/<run>/raw_<split>.csv with columns patientId,score,x,y,w,h: top-left boxes in the
ORIGINAL 1024-px frame, every detection above the model's low confidence floor. Thresholds are
applied later, only by kit.score.postprocess (tuned by ``tune`` on raw_val.csv). When the model has the
image-level classifier, raw_<split>_images.csv (patientId,p_opacity) holds every predicted
image's P(Lung Opacity) (mean over the TTA passes). The weights are the run's best checkpoint by
val_map (best.h5) unless ``--checkpoint last`` or a path says otherwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from kit import paths
from kit.config import RunConfig
from kit.errors import KitError
from kit.infer.fusion import fuse_raw
from kit.io import write_csv
from kit.runs import (IMAGE_COLUMNS, RAW_COLUMNS, VAL_IDS, image_scores_path, raw_path, read_ids,
                      resolve_run)

FLIP_IOU = 0.5     # WBF IoU that joins a box and its flipped-pass twin


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="latest", help="run folder, name or 'latest'")
    p.add_argument("--split", choices=["val", "test", "all"], default="all",
                   help="val: the run's held-out images; test: the stage-2 test images")
    p.add_argument("--tta", choices=["none", "flip"], default=None,
                   help="test-time augmentation (default: the run's config)")
    p.add_argument("--batch", type=int, default=None, help="images per detect() call")
    p.add_argument("--checkpoint", default="best", metavar="best|last|PATH",
                   help="weights: best = the epoch with the best val_map (best.h5; the newest "
                        "checkpoint when the run has none), last = the newest epoch, or a file")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR)


def run_predict(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, args.runs_dir)
    splits = ["val", "test"] if args.split == "all" else [args.split]
    model = load_inference_model(run, args.checkpoint)
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


def _raw_table(pid: str, rois, scores, side: int) -> pd.DataFrame:
    """One image's detections (y1x1y2x2 cache pixels) as raw rows (RAW_COLUMNS, 1024-px frame)."""
    xywh = xyxy_to_raw(rois, side)
    return pd.DataFrame({"patientId": pid, "score": np.asarray(scores, dtype=np.float64),
                         "x": xywh[:, 0], "y": xywh[:, 1], "w": xywh[:, 2], "h": xywh[:, 3]},
                        columns=RAW_COLUMNS)


def load_inference_model(run: Path, checkpoint: str = "best"):
    """The run's inference model with the weights ``checkpoint`` names (see checkpoint_of)."""
    from kit.mrcnn.config import config_from
    from kit.mrcnn.model import MaskRCNN
    from kit.runs import checkpoint_of

    cfg = RunConfig.load(run / "config.json")
    weights = checkpoint_of(run, checkpoint)
    model = MaskRCNN(mode="inference", config=config_from(cfg.mrcnn_fields()), model_dir=str(run))
    model.load_weights(str(weights), by_name=True)
    print(f"predict: weights {weights}")
    return model


def split_ids(run: Path, cfg: RunConfig, split: str, cache) -> list[str]:
    if split == "val":
        path = run / VAL_IDS
        if not path.is_file():
            raise KitError(f"{path} is missing: the run was not trained by this kit")
        return read_ids(path)
    return cache.ids("test")


def detect_raw(model, images: list[np.ndarray], ids: list[str], side: int,
               tta: str = "none", batch: int | None = None, progress: str | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect on cache-size images -> (raw detections (RAW_COLUMNS), image scores (IMAGE_COLUMNS)).

    ``tta="flip"`` also detects on the horizontally flipped image and fuses both box sets with
    weighted box fusion; P(Lung Opacity) is the mean of the passes. The image table is empty
    when the model has no image-level classifier."""
    batch = batch or model.config.BATCH_SIZE
    passes: list[list[pd.DataFrame]] = [[], []]      # raw tables of the plain and flipped passes
    image_rows: list[tuple[str, float]] = []
    steps = range(0, len(ids), batch)
    for i in (tqdm(steps, desc=progress, unit="batch") if progress else steps):
        chunk, pics = ids[i:i + batch], images[i:i + batch]
        found = model.detect(pics, masks=False)
        flipped = model.detect([im[:, ::-1] for im in pics], masks=False) if tta == "flip" \
            else [None] * len(chunk)
        for pid, r, f in zip(chunk, found, flipped):
            rois = r.get("boxes", r["rois"])      # unrounded boxes when the model gives them
            passes[0].append(_raw_table(pid, rois, r["scores"], side))
            if f is not None:
                passes[1].append(_raw_table(pid, unflip(f.get("boxes", f["rois"]), side),
                                            f["scores"], side))
            if "image_probs" in r:
                both = [r] if f is None else [r, f]
                image_rows.append((pid, float(np.mean([p["image_probs"][0] for p in both]))))
    tables = [pd.concat(t, ignore_index=True) if t else pd.DataFrame(columns=RAW_COLUMNS)
              for t in passes]
    raw = tables[0]
    if tta == "flip":    # one WBF entry point (kit.infer.fusion.fuse_raw), image order kept
        raw = fuse_raw(tables, iou_thr=FLIP_IOU)
        order = {pid: k for k, pid in enumerate(ids)}
        raw = raw.iloc[np.argsort(raw["patientId"].map(order).to_numpy(), kind="stable")]
    raw = raw[(raw.w > 0) & (raw.h > 0)][RAW_COLUMNS].round(
        {"score": 5, "x": 1, "y": 1, "w": 1, "h": 1})
    image_scores = pd.DataFrame(image_rows, columns=IMAGE_COLUMNS).round({"p_opacity": 5})
    return raw.reset_index(drop=True), image_scores


def predict(run: Path, split: str, tta: str | None = None, batch: int | None = None,
            model=None) -> Path:
    """Detect on every image of ``split``; writes raw_<split>.csv (and raw_<split>_images.csv
    when the model classifies images); returns the raw table's path."""
    from kit.data.prepare import prepare
    from kit.data.prepare import as_rgb

    cfg = RunConfig.load(run / "config.json")
    tta = tta or cfg.tta
    cache = prepare(Path(cfg.data_dir), cfg.image_size, splits=(split if split == "test"
                                                                 else "train",))
    ids = split_ids(run, cfg, split, cache)
    model = model or load_inference_model(run)
    start = time.time()
    images = _Images(cache, ids, as_rgb)
    raw, image_scores = detect_raw(model, images, ids, cache.size, tta=tta, batch=batch,
                                   progress=f"predict {split}")
    elapsed = time.time() - start
    out = raw_path(run, split)
    write_csv(out, raw)
    if len(image_scores):
        write_csv(image_scores_path(run, split), image_scores)
    print(f"predict {split}: {len(ids)} images, {len(raw)} raw detections, "
          f"{len(ids) / max(elapsed, 1e-9):.1f} images/s (tta={tta})")
    unread = cache.info["splits"].get("test", {}).get("skipped", []) if split == "test" else []
    if unread:   # prepare skipped them: no rows here, so every submission leaves them empty
        print(f"error: predict test: {len(unread)} test image(s) unreadable, so their "
              f"PredictionString is empty in every submission: {'; '.join(unread[:3])}"
              f"{f'; and {len(unread) - 3} more' if len(unread) > 3 else ''}",
              file=sys.stderr)
    return out


class _Images:
    """Lazy list of a cache's images (RGB) in ``ids`` order: a slice loads only that slice."""

    def __init__(self, cache, ids: list[str], to_rgb):
        self.cache, self.ids, self.to_rgb = cache, ids, to_rgb

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: slice) -> list[np.ndarray]:
        return [self.to_rgb(self.cache.load(pid)) for pid in self.ids[index]]
