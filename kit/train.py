"""``train``: prepare -> split -> RSNA dataset -> Mask R-CNN schedule stages -> checkpoints.

runs/<run>/ gets config.json, train_ids.csv, val_ids.csv, checkpoints/mask_rcnn_*.h5,
history.csv and curves.png. ``--resume RUN`` continues from the run's last checkpoint at the
epoch after it (a run killed mid-epoch loses at most that epoch).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from kit import paths
from kit.config import PRESETS, RunConfig, get_preset
from kit.errors import KitError
from kit.io import write_csv
from kit.runs import new_run_dir, resolve_run

COCO_HEAD_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="named configuration (default: demo on CPU, kaggle on a GPU)")
    p.add_argument("--data", type=Path, default=None,
                   help="data folder in Kaggle's layout (default: data/rsna, else data/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set image_size=256 (repeatable)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN (a name, a path or 'latest')")
    p.add_argument("--weights", type=Path, default=None,
                   help="initial weights file (e.g. mask_rcnn_coco.h5) for init=coco")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR)


def run_train(args: argparse.Namespace) -> int:
    run = train(preset=args.preset, data_dir=args.data, overrides=args.set, resume=args.resume,
                weights=args.weights, runs_dir=args.runs_dir)
    print(f"run: {run}")
    return 0


def default_preset() -> str:
    import tensorflow as tf

    return "kaggle" if tf.config.list_physical_devices("GPU") else "demo"


def load_run_data(cfg: RunConfig, run: Path):
    """The prepared cache, boxes and the run's split (written on first use, reused on resume)."""
    from kit.cache import prepare
    from kit.labels import boxes_by_patient, read_labels
    from kit.split import split_patients

    data_dir = Path(cfg.data_dir)
    cache = prepare(data_dir, cfg.image_size, splits=("train",))
    labels = read_labels(data_dir / paths.TRAIN_LABELS)
    boxes = boxes_by_patient(labels)
    if not (run / "val_ids.csv").is_file():
        cached = set(cache.ids("train"))
        usable = labels[labels.patientId.isin(cached)]
        train_ids, val_ids = split_patients(usable, n_val=cfg.n_val, seed=cfg.split_seed)
        write_csv(run / "train_ids.csv", pd.DataFrame({"patientId": list(train_ids)}))
        write_csv(run / "val_ids.csv", pd.DataFrame({"patientId": list(val_ids)}))
    train_ids = pd.read_csv(run / "train_ids.csv").patientId.astype(str).tolist()
    val_ids = pd.read_csv(run / "val_ids.csv").patientId.astype(str).tolist()
    return cache, boxes, train_ids, val_ids


def init_weights(model, cfg: RunConfig, weights: Path | None) -> dict | None:
    """Initial weights by name: COCO without the class-specific heads, ImageNet, or none."""
    from kit.mrcnn import weights as W

    download = Path("/kaggle/working").is_dir()    # only on Kaggle (internet on) do we fetch
    if cfg.init == "none":
        return None
    if cfg.init == "coco":
        path = weights or W.coco_weights_path(download=download)
        return model.load_weights(str(path), by_name=True, exclude=COCO_HEAD_LAYERS)
    if cfg.init == "imagenet":
        path = weights or W.imagenet_weights_path(cfg.backbone, download=download)
        return model.load_weights(str(path), by_name=True)
    return model.load_weights(cfg.init, by_name=True, exclude=COCO_HEAD_LAYERS)


def train(preset: str | None = None, data_dir: Path | None = None,
          overrides: list[str] | None = None, resume: str | None = None,
          weights: Path | None = None, runs_dir: Path = paths.RUNS_DIR) -> Path:
    """Train a preset (or resume a run) and return the run folder."""
    if resume:
        if preset or overrides:
            raise KitError("--resume continues a run with its saved config.json; "
                           "drop --preset/--set (start a new run to change them)")
        run = resolve_run(resume, runs_dir)
        cfg = RunConfig.load(run / "config.json")
    else:
        cfg = get_preset(preset or default_preset(), overrides)
        data_dir = Path(data_dir or paths.default_data_dir())
        if not (data_dir / paths.TRAIN_LABELS).is_file():
            raise KitError(f"no {paths.TRAIN_LABELS} in {data_dir}: run `make data` (Kaggle) "
                           "or `make demo-data` (embedded synthetic data) first")
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        run = new_run_dir(cfg.name, runs_dir)
        cfg.save(run / "config.json")

    cache, boxes, train_ids, val_ids = load_run_data(cfg, run)
    from kit.dataset import RSNADataset
    from kit.mrcnn.data import albumentations_augmentation
    from kit.mrcnn.model import MaskRCNN

    train_ds = RSNADataset(cache.load, cache.size, train_ids, boxes)
    val_ds = RSNADataset(cache.load, cache.size, val_ids, boxes)
    print(f"train: {cfg.name} on {cfg.data_dir}: {len(train_ids)} train / {len(val_ids)} val "
          f"images at {cfg.image_size} px, {cfg.backbone}, {cfg.total_epochs} epochs")

    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    mcfg = cfg.mrcnn_config(gpu_count=max(gpus, 1))   # MirroredStrategy over >1 GPU
    if not cfg.steps_per_epoch:     # 0: one pass over the images per epoch
        mcfg.STEPS_PER_EPOCH = max(1, len(train_ids) // mcfg.BATCH_SIZE)
    if not cfg.validation_steps:
        mcfg.VALIDATION_STEPS = max(1, len(val_ids) // mcfg.BATCH_SIZE)
    model = MaskRCNN(mode="training", config=mcfg, model_dir=str(run))
    checkpoint = _last_checkpoint(model) if resume else None
    if checkpoint:
        model.load_weights(checkpoint, by_name=True)
        print(f"resuming from {checkpoint} at epoch {model.epoch + 1}")
    else:
        init_weights(model, cfg, weights)

    augmentation = albumentations_augmentation() if cfg.augmented else None
    start = time.time()
    for stage, end in cfg.schedule:
        if end <= model.epoch:
            continue
        print(f"stage: layers={stage.layers} epochs {model.epoch + 1}..{end} "
              f"lr={cfg.learning_rate * stage.lr_factor:g} augment={stage.augment}")
        model.train(train_ds, val_ds, learning_rate=cfg.learning_rate * stage.lr_factor,
                    epochs=end, layers=stage.layers,
                    augmentation=augmentation if stage.augment else None,
                    workers=cfg.workers)
    print(f"trained {cfg.total_epochs} epochs in {time.time() - start:.0f} s")
    _finish_history(run, model)
    return run


def _last_checkpoint(model) -> str | None:
    try:
        return model.find_last()
    except FileNotFoundError:
        return None


def _finish_history(run: Path, model) -> None:
    """Copy the training log next to config.json and draw the curves."""
    log = Path(model.log_dir) / "history.csv"
    if log.is_file() and log.resolve() != (run / "history.csv").resolve():
        write_csv(run / "history.csv", pd.read_csv(log))
    if (run / "history.csv").is_file():
        from kit.report import plot_history

        plot_history(pd.read_csv(run / "history.csv"), run / "curves.png")


def checkpoint_of(run: Path) -> Path:
    """The newest checkpoint of a run folder (searched recursively)."""
    found = sorted(Path(run).rglob("mask_rcnn_*.h5"))
    if not found:
        raise KitError(f"no checkpoint (mask_rcnn_*.h5) under {run}: train it first")
    return found[-1]
