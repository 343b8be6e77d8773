"""``predict``: a run's model -> RAW detections (unthresholded), optionally with flip TTA.

Writes runs/<run>/raw_<split>.csv with columns patientId,score,x,y,w,h: top-left boxes in the
ORIGINAL 1024-px frame, every detection above the model's low confidence floor. Thresholds are
applied later, only by kit.score.postprocess (tuned by ``tune`` on raw_val.csv). When the model has the
image-level classifier, raw_<split>_images.csv (patientId,p_opacity) holds every predicted
image's P(Lung Opacity) (mean over the TTA passes). The weights are the run's best checkpoint by
val_map (best.h5) unless ``--checkpoint last`` or a path says otherwise.

``--images DIR`` runs the model on any folder of DICOMs instead: they are prepared into a cache of
their own (data/cache/images-<DIR name>-<path hash>-<size>), raw_<DIR name>.csv (+ _images.csv)
land in the run folder with boxes in each image's own pixels, and the run's postprocess.json
turns them into a submission CSV with a row for every file (empty for an unreadable one).
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
                   help="val: the run's held-out images; test: the stage-2 test images; "
                        "all: both (default)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="instead of --split: every *.dcm in DIR -> raw_<DIR name>.csv (+ _images) "
                        "in the run folder and a submission CSV with the run's postprocess.json")
    p.add_argument("--out", type=Path, default=None,
                   help="with --images: the submission CSV (default: "
                        "submissions/<run>-<DIR name>.csv)")
    p.add_argument("--tta", choices=["none", "flip"], default=None,
                   help="test-time augmentation (default: the run's config)")
    p.add_argument("--batch", type=int, default=None, help="images per detect() call")
    p.add_argument("--checkpoint", default="best", metavar="best|last|PATH",
                   help="weights: best = the epoch with the best val_map (best.h5; the newest "
                        "checkpoint when the run has none), last = the newest epoch, or a file")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the run folders (default: runs/)")


def run_predict(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, args.runs_dir)
    if args.images is not None:
        raw, sub = predict_images(run, args.images, out=args.out, tta=args.tta,
                                  batch=args.batch, checkpoint=args.checkpoint)
        print(f"wrote {raw} (raw detections) and {sub} (submission)")
        return 0
    if args.out is not None:
        raise KitError("--out goes with --images (the submission of a folder's images); "
                       "predict --split writes the run's raw tables")
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


# ---- any folder of DICOMs ---------------------------------------------------------------------
def images_name(folder: Path) -> str:
    """The table name of a folder's images: its name, as [A-Za-z0-9_-]; never val or test."""
    import re

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).resolve().name).strip("-") or "images"
    return f"images-{name}" if name in ("val", "test") else name


def images_cache_dir(folder: Path, size: int) -> Path:
    """data/cache/images-<folder name>-<hash of its path>-<size>: one cache per folder and size."""
    import hashlib

    key = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:8]
    return paths.CACHE_DIR / f"images-{images_name(folder)}-{key}-{size}"


def prepare_folder(folder: Path, size: int) -> tuple[Path, list[str], dict[str, int], list[str]]:
    """Decode every *.dcm of ``folder`` to uint8 (size, size) .npy files in its cache (a file
    newer than its .npy is decoded again). Returns (cache dir, ids in file-name order, original
    longer side per readable id, one error line per unreadable file)."""
    from kit.data import dicom
    import json

    from kit.io import atomic_open, write_json

    folder = Path(folder)
    if not folder.is_dir():
        raise KitError("--images: not a folder", path=folder)
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise KitError("--images: no *.dcm files in this folder", path=folder)
    cache = images_cache_dir(folder, size)
    cache.mkdir(parents=True, exist_ok=True)
    sides_path = cache / "sides.json"
    sides: dict[str, int] = json.loads(sides_path.read_text()) if sides_path.is_file() else {}
    ids, errors = [], []
    for src in tqdm(files, desc=f"prepare {folder.name} {size}px", unit="img"):
        pid, dst = src.stem, cache / f"{src.stem}.npy"
        ids.append(pid)
        if dst.is_file() and pid in sides and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        sides.pop(pid, None)
        try:
            arr, header = dicom.read_image(src, size)
        except KitError as exc:
            errors.append(str(exc))
            continue
        except Exception as exc:   # damage the reader did not foresee: still only this file
            errors.append(f"{src}: unreadable ({dicom.one_line(exc)})")
            continue
        with atomic_open(dst, "wb", fsync=False) as fh:
            np.save(fh, arr)
        sides[pid] = int(max(header["Rows"], header["Columns"]))
    write_json(sides_path, sides)
    return cache, ids, {pid: sides[pid] for pid in ids if pid in sides}, errors


def predict_images(run: Path, folder: Path, out: Path | None = None, tta: str | None = None,
                   batch: int | None = None, checkpoint: str = "best", model=None
                   ) -> tuple[Path, Path]:
    """The run's model on every DICOM of ``folder``: raw_<name>.csv (+ raw_<name>_images.csv) in
    the run folder and a submission CSV (the run's postprocess.json) with a row for every file,
    empty for an unreadable one (named on stderr). Boxes are in each image's own pixels."""
    from kit.data.prepare import as_rgb
    from kit.runs import image_scores_beside, read_raw
    from kit.score.postprocess import PostProcess
    from kit.score.submission import write_submission

    post_path = Path(run) / "postprocess.json"
    if not post_path.is_file():
        raise KitError("the run has no postprocess.json: tune it first (python -m kit tune "
                       f"--run {run})", path=post_path)
    post = PostProcess.from_json(post_path)
    cfg = RunConfig.load(Path(run) / "config.json")
    tta = tta or cfg.tta
    name = images_name(folder)
    cache, ids, sides, errors = prepare_folder(folder, cfg.image_size)
    readable = [pid for pid in ids if pid in sides]
    for error in errors:
        print(f"error: skipped image {error}", file=sys.stderr)
    if errors:
        print(f"error: {len(errors)} image(s) of {folder} unreadable (listed above): their "
              "PredictionString is empty", file=sys.stderr)
    raw, image_scores = pd.DataFrame(columns=RAW_COLUMNS), pd.DataFrame(columns=IMAGE_COLUMNS)
    if readable:
        model = model or load_inference_model(run, checkpoint)
        images = [as_rgb(np.load(cache / f"{pid}.npy")) for pid in readable]
        raw, image_scores = detect_raw(model, images, readable, cfg.image_size, tta=tta,
                                       batch=batch, progress=f"predict {name}")
        factor = raw["patientId"].map(sides).to_numpy(np.float64) / paths.IMAGE_SIZE
        for col in ("x", "y", "w", "h"):    # the 1024 frame -> each image's own pixels
            raw[col] = (raw[col].to_numpy(np.float64) * factor).round(1)
    raw_out = raw_path(run, name)
    write_csv(raw_out, raw)
    if len(image_scores):
        write_csv(image_scores_path(run, name), image_scores)
    elif image_scores_path(run, name).is_file():
        image_scores_path(run, name).unlink()
    preds = post.apply(read_raw(raw_out), image_scores_beside(raw_out))
    out = Path(out) if out is not None else paths.SUBMISSIONS_DIR / f"{Path(run).name}-{name}.csv"
    write_submission(out, preds, ids)
    print(f"predict {name}: {len(ids)} images ({len(errors)} unreadable), {len(raw)} raw "
          f"detections (tta={tta})")
    return raw_out, out
