"""The trainer behind ``train``: prepare -> split -> RSNA dataset -> Mask R-CNN schedule stages ->
checkpoints (the command line is kit.flow.train, which may run the preflight first).

runs/<run>/ gets config.json, train_ids.csv, val_ids.csv, checkpoints/mask_rcnn_*.h5,
history.csv and curves.png. ``--resume RUN`` continues from the run's last checkpoint at the
epoch after it (a run killed mid-epoch loses at most that epoch); on resume only the learning
rate may change (``--set learning_rate=...``, or ``stages`` with new ``lr_factor``s only), and
train_state.json records the change. A NaN / infinite loss stops training at that step with one
line (epoch, step, loss term); train_state.json says so and the last good checkpoint and best.h5
are kept (see kit.mrcnn.training.TerminateOnNaN).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kit import paths
from kit import budget as B
from kit.budget import Budget
from kit.config import RunConfig, get_preset
from kit.errors import KitError
from kit.io import write_csv, write_json
from kit.log import say
from kit.runs import (BEST_WEIGHTS, TRAIN_IDS, TRAIN_STATE, VAL_IDS, checkpoint_of, checkpoints,
                      new_run_dir, read_ids, resolve_run, trained_epochs)
from kit.data.split import split_patients

if TYPE_CHECKING:
    from kit.train.callbacks import BudgetMeter

COCO_HEAD_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


def default_preset() -> str:
    import tensorflow as tf

    return "kaggle" if tf.config.list_physical_devices("GPU") else "demo"


def load_run_data(cfg: RunConfig, run: Path,
                  split: tuple[list[str], list[str]] | None = None):
    """The prepared cache (train and test images), boxes, image classes and the run's split
    (written on first use, reused on resume): ``split`` (train_ids, val_ids from a split CSV,
    see kit.data.split.read_split_file), else a seeded n_val split, or fold ``fold`` of ``folds`` stratified
    patient folds."""
    from kit.data.prepare import prepare
    from kit.data.labels import image_classes
    from kit.data.labels import boxes_by_patient, read_class_info, read_labels

    data_dir = Path(cfg.data_dir)
    cache = prepare(data_dir, cfg.image_size, splits=("train", "test"))
    labels = read_labels(data_dir / paths.TRAIN_LABELS)
    boxes = boxes_by_patient(labels)
    classes = (image_classes(read_class_info(data_dir / paths.CLASS_INFO))
               if cfg.image_classifier and (data_dir / paths.CLASS_INFO).is_file() else {})
    if not (run / VAL_IDS).is_file():
        cached = set(cache.ids("train"))
        usable = labels[labels.patientId.isin(cached)]
        if split is not None:
            train_ids, val_ids = ([p for p in ids if p in cached] for ids in split)
            lost = sum(len(ids) for ids in split) - len(train_ids) - len(val_ids)
            if lost:
                say(f"split: {lost} image(s) of the split file are not in the prepared cache "
                    "(unreadable DICOMs) and are left out")
            if not train_ids or not val_ids:
                raise KitError("the split file leaves no readable train or no val image")
        elif cfg.folds:
            from kit.data.split import fold_split

            train_ids, val_ids = fold_split(usable, cfg.folds, cfg.fold, seed=cfg.split_seed)
        else:
            train_ids, val_ids = split_patients(usable, n_val=cfg.n_val, seed=cfg.split_seed)
        write_csv(run / TRAIN_IDS, pd.DataFrame({"patientId": list(train_ids)}))
        write_csv(run / VAL_IDS, pd.DataFrame({"patientId": list(val_ids)}))
    train_ids, val_ids = read_ids(run / TRAIN_IDS), read_ids(run / VAL_IDS)
    return cache, boxes, classes, train_ids, val_ids


def init_weights(model, cfg: RunConfig, weights: Path | None) -> dict | None:
    """Initial weights by name: COCO without the class-specific heads, ImageNet, a file, or none
    (the file as kit.data.weights.init_weights_path checked it up front)."""
    from kit.data.weights import init_weights_path

    path = init_weights_path(cfg, weights)
    if path is None:
        return None
    if cfg.init == "imagenet":
        return model.load_weights(str(path), by_name=True)
    return model.load_weights(str(path), by_name=True, exclude=COCO_HEAD_LAYERS)


def train(preset: str | None = None, data_dir: Path | None = None,
          overrides: list[str] | None = None, resume: str | None = None,
          weights: Path | None = None, runs_dir: Path = paths.RUNS_DIR,
          budget: Budget | None = None, split: Path | None = None) -> Path:
    """Train a preset (or resume a run) and return the run folder.

    ``split``: a split CSV (the ``split`` command's patientId,split table) whose train/val
    images are used instead of the seeded split (not with folds, not on resume).

    With a ``budget`` the schedule is planned to leave the rest of the flow its time (see
    kit.budget): after a few measured steps, the running and remaining epochs are shortened
    alike when they would not fit, and training stops at the last step that leaves the reserve.
    runs/<run>/train_state.json says how it ended (complete, or stopped by the budget)."""
    from kit.data.weights import init_weights_path

    resumed_with = None
    if split is not None and resume:
        raise KitError("--split applies to a new run; a resumed run keeps its train_ids.csv "
                       "and val_ids.csv")
    split_ids = None
    if resume:
        if preset:
            raise KitError("--resume continues a run with its saved config.json; "
                           "drop --preset (start a new run to change it)")
        run = resolve_run(resume, runs_dir)
        cfg = RunConfig.load(run / "config.json")
        if overrides:
            cfg, resumed_with = resume_overrides(cfg, overrides, trained_epochs(run))
            cfg.save(run / "config.json")
            say(f"resuming with {', '.join(overrides)} (recorded in {TRAIN_STATE})")
        if not checkpoints(run):        # no epoch yet: it starts from the init weights again
            init_weights_path(cfg, weights)
    else:
        cfg = get_preset(preset or default_preset(), overrides)
        init_weights_path(cfg, weights)   # a missing/damaged file fails before anything exists
        data_dir = Path(data_dir or paths.default_data_dir())
        if not (data_dir / paths.TRAIN_LABELS).is_file():
            raise KitError(f"no {paths.TRAIN_LABELS} in {data_dir}: run `make data` (Kaggle) "
                           "or `make demo-data` (embedded synthetic data) first")
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        if split is not None:
            from kit.data.split import read_split_file

            split_ids = read_split_file(split, data_dir, cfg.folds)
        run = new_run_dir(cfg.name, runs_dir)
        cfg.save(run / "config.json")

    cache, boxes, classes, train_ids, val_ids = load_run_data(cfg, run, split_ids)
    from kit.train.callbacks import BudgetMeter, EpochMetric, Warmup, subset_ids
    from kit.train.dataset import RSNADataset
    from kit.data.prepare import as_rgb
    from kit.mrcnn.augment import albumentations_augmentation
    from kit.mrcnn.config import config_from
    from kit.mrcnn.model import MaskRCNN
    from kit.mrcnn.training import layer_regex
    from kit.mrcnn.training import NonFiniteLoss

    train_ds = RSNADataset(cache.load, cache.size, train_ids, boxes, classes)
    val_ds = RSNADataset(cache.load, cache.size, val_ids, boxes, classes)
    say(f"train: {cfg.name} on {cfg.data_dir}: {len(train_ids)} train / {len(val_ids)} val "
        f"images at {cfg.image_size} px, {cfg.backbone}, {cfg.total_epochs} epochs, seed {cfg.seed}")

    import keras
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    mcfg = config_from(cfg.mrcnn_fields(gpu_count=max(gpus, 1)))   # MirroredStrategy over >1 GPU
    if not cfg.steps_per_epoch:     # 0: one pass over the images per epoch
        mcfg.STEPS_PER_EPOCH = max(1, len(train_ids) // mcfg.BATCH_SIZE)
    if not cfg.validation_steps:
        mcfg.VALIDATION_STEPS = max(1, len(val_ids) // mcfg.BATCH_SIZE)
    keras.utils.set_random_seed(cfg.seed)       # weight init; data order etc. follow mcfg.SEED
    if not gpus:   # same seed, same history on a CPU (no measurable cost); on a GPU TensorFlow
        tf.config.experimental.enable_op_determinism()   # has no deterministic CropAndResize grad
    model = MaskRCNN(mode="training", config=mcfg, model_dir=str(run))
    found = checkpoints(run) if resume else []
    checkpoint = str(found[-1]) if found else None
    if checkpoint:
        model.load_weights(checkpoint, by_name=True)
        say(f"resuming from {checkpoint} at epoch {model.epoch + 1}")
    else:
        init_weights(model, cfg, weights)

    t_build = time.time()
    infer = MaskRCNN(mode="inference", config=config_from(cfg.mrcnn_fields()), model_dir=str(run))
    metric = EpochMetric(model, infer, subset_ids(val_ids, cfg.val_map_images, cfg.seed),
                         lambda pid: as_rgb(cache.load(pid)), boxes, cache.size, run,
                         probe_ids=train_ids, first_epoch=cfg.val_map_from)
    metric.measure()
    build_s = time.time() - t_build
    n_predict = len(val_ids) + len(cache.ids("test"))
    refit_ids = _refit_ids(cfg, train_ids, classes)
    scheduled = mcfg.STEPS_PER_EPOCH
    meter = BudgetMeter(budget, detect_s=metric.detect_s, build_s=build_s,
                        predict_images=n_predict + len(refit_ids),   # the refit: ~1 detect each
                        tta_passes=2 if cfg.tta == "flip" else 1,
                        epoch_end_guess_s=metric.detect_s * len(metric.ids),
                        val_steps=mcfg.VALIDATION_STEPS if cfg.val_loss else 0,
                        first_scored=cfg.val_map_from,
                        planner=lambda: _plan(budget, meter, cfg, model.epoch, scheduled))
    if budget:
        say(f"time budget {B.format_duration(budget.seconds)}: "
            f"{B.format_duration(budget.left())} left; reserve "
            f"{B.format_duration(B.reserve_s(meter.costs()))} for predict ({n_predict} images, "
            f"{metric.detect_s:.3f} s/image/pass), the image-head refit ({len(refit_ids)} "
            f"images) and tune/submit/report; after "
            f"{BudgetMeter.PLAN_AFTER} steps the plan is fixed")

    augmentation = albumentations_augmentation() if cfg.augmented else None
    start = time.time()
    while meter.stopped_at is None:
        stage_end = next(((st, end) for st, end in cfg.schedule if end > model.epoch), None)
        if stage_end is None:
            break
        stage, end = stage_end
        # a fit on other layers than the last one traces the graph first (the same layers reuse
        # it: kit.mrcnn.training.can_reuse_graph)
        trace_s = meter.trace_s if model.compiled_for != layer_regex(stage.layers) else 0.0
        if budget and meter.step_s is not None and B.should_stop(
                budget.left() - trace_s, meter.costs()):
            meter.stopped_at = 0
            left, reserve = B.format_duration(budget.left()), B.reserve_s(meter.costs())
            say(f"time budget: not starting epoch {model.epoch + 1} ({left} left; tracing the "
                f"graph again takes {trace_s:.0f} s, the reserve is "
                f"{B.format_duration(reserve)})")
            break
        if meter.epoch_limit is not None:
            mcfg.STEPS_PER_EPOCH = meter.epoch_limit
        before = model.epoch
        lr = cfg.learning_rate * stage.lr_factor
        ramp = ([Warmup(lr, cfg.warmup_steps, mcfg.STEPS_PER_EPOCH)]
                if model.epoch * mcfg.STEPS_PER_EPOCH < cfg.warmup_steps else [])
        say(f"stage: layers={stage.layers} epochs {model.epoch + 1}..{end} of "
            f"{cfg.total_epochs}, {mcfg.STEPS_PER_EPOCH} steps each, "
            f"lr={lr:g} augment={stage.augment}"
            + (f" (linear warm-up over the run's first {cfg.warmup_steps} steps)" if ramp else ""))
        try:
            model.train(train_ds, val_ds if cfg.val_loss else None, learning_rate=lr,
                        epochs=end, layers=stage.layers,
                        augmentation=augmentation if stage.augment else None,
                        custom_callbacks=[*ramp, metric, meter], workers=cfg.workers)
        except NonFiniteLoss as exc:
            raise _stopped_by_nan(run, cfg, exc, resumed_with) from None
        model.epoch = trained_epochs(run)      # an epoch may end early (plan, budget)
        if model.epoch <= before:
            raise KitError(f"training did not finish an epoch after epoch {before}", path=run)
    done = trained_epochs(run)
    refit = _refit_head(run, infer, refit_ids, classes, lambda pid: as_rgb(cache.load(pid)), cfg)
    state = {"epochs_done": done, "epochs_scheduled": cfg.total_epochs,
             "complete": meter.stopped_at is None and done >= cfg.total_epochs,
             "stopped_by_budget": meter.stopped_at is not None,
             "stopped_by": "budget" if meter.stopped_at is not None else None,
             "resumed_with": _resumes(run, resumed_with),
             "steps_per_epoch": {"scheduled": scheduled, "last": mcfg.STEPS_PER_EPOCH},
             "step_s": meter.step_s, "seconds": round(time.time() - start, 1),
             "image_head_refit": refit}
    write_json(run / TRAIN_STATE, state)
    say(f"trained to epoch {done} of {cfg.total_epochs} in {time.time() - start:.0f} s"
        + (" (stopped by the time budget; `--resume` continues)" if state["stopped_by_budget"]
           else ""))
    _finish_history(run, model)
    return run


RESUME_KEYS = ("learning_rate", "stages")    # what --set may change on --resume


def resume_overrides(cfg: RunConfig, overrides: list[str], done: int) -> tuple[RunConfig, dict]:
    """``cfg`` with the ``--set`` items a resumed run accepts (the learning rate: learning_rate,
    or stages whose lr_factor alone changed) and the record of the change ({"epoch": first epoch
    it applies to, "set": items, key: [old, new]})."""
    keys = {item.partition("=")[0].strip().replace("-", "_") for item in overrides}
    refused = sorted(keys - set(RESUME_KEYS))
    if refused:
        raise KitError(f"--resume continues a run with its saved config.json: only --set "
                       f"learning_rate=... (or stages with new lr_factor values) may change, not "
                       f"{', '.join(refused)}; start a new run to change them")
    new = cfg.with_overrides(overrides)
    shape = [(s.layers, s.epochs, s.augment) for s in cfg.stages]
    if [(s.layers, s.epochs, s.augment) for s in new.stages] != shape:
        raise KitError("--resume --set stages=...: only the stages' lr_factor may change on "
                       f"resume; keep layers/epochs/augment as in config.json ({shape})")
    rates = [new.learning_rate, *(s.lr_factor for s in new.stages)]
    if not all(math.isfinite(r) and r > 0 for r in rates):
        raise KitError(f"--set {' '.join(overrides)}: the learning rate and every lr_factor "
                       "must be a positive number")
    record: dict = {"epoch": done + 1, "set": list(overrides)}
    if new.learning_rate != cfg.learning_rate:
        record["learning_rate"] = [cfg.learning_rate, new.learning_rate]
    if new.stages != cfg.stages:
        record["lr_factors"] = [[s.lr_factor for s in cfg.stages],
                                [s.lr_factor for s in new.stages]]
    return new, record


def _resumes(run: Path, resumed_with: dict | None) -> list[dict]:
    """Every learning-rate change made on --resume so far (the last train_state.json's + this)."""
    try:
        earlier = json.loads((run / TRAIN_STATE).read_text()).get("resumed_with") or []
    except (OSError, ValueError, AttributeError):
        earlier = []
    return [*earlier, *([resumed_with] if resumed_with else [])]


def _stopped_by_nan(run: Path, cfg: RunConfig, exc, resumed_with: dict | None) -> KitError:
    """Record in train_state.json why training stopped; the one line to show (a KitError)."""
    found = checkpoints(run)
    last = found[-1] if found else None
    lr = cfg.learning_rate / 10
    write_json(run / TRAIN_STATE, {
        "stopped_by": "nan_loss", "epoch": exc.epoch, "step": exc.step, "term": exc.term,
        "values": {k: str(v) for k, v in exc.terms.items()}, "loss": str(exc.loss),
        "learning_rate": cfg.learning_rate, "epochs_done": trained_epochs(run),
        "epochs_scheduled": cfg.total_epochs, "complete": False, "stopped_by_budget": False,
        "last_checkpoint": str(last.relative_to(run)) if last else None,
        "resumed_with": _resumes(run, resumed_with)})
    kept = [p.name for p in (last, run / BEST_WEIGHTS) if p is not None and p.is_file()]
    kept_s = (f"the last good {' and '.join(kept)} {'are' if len(kept) > 1 else 'is'} kept"
              if kept else "no epoch had finished yet")
    values = ", ".join(str(v) for v in exc.terms.values())
    return KitError(f"training stopped at epoch {exc.epoch}, step {exc.step}: {exc.term} is "
                    f"{values} (total loss {exc.loss}); {kept_s}; resume with a lower learning "
                    f"rate: python -m kit train --resume {run} --set learning_rate={lr:g}",
                    path=run / TRAIN_STATE)


def _refit_ids(cfg: RunConfig, train_ids: list[str], classes: dict[str, int]) -> list[str]:
    """The training images the image head is refitted on (see kit.train.image_head); none when the
    run has no image head, the refit is off or no image has a class."""
    if not (cfg.image_classifier and cfg.image_head_refit and classes):
        return []
    from kit.train.image_head import pick_ids

    return pick_ids(train_ids, classes, cfg.image_head_refit, cfg.seed)


def _refit_head(run: Path, infer, ids: list[str], classes: dict[str, int], load_image,
                cfg: RunConfig) -> dict | None:
    """Refit the image head of the checkpoint predict uses (best.h5, else the newest epoch)."""
    if not ids:
        return None
    from kit.train.image_head import refit_image_head

    t0 = time.time()
    weights = checkpoint_of(run, "best")
    info = refit_image_head(infer, weights, ids, classes, load_image, 0, cfg.seed)
    if info:
        info.update(checkpoint=weights.name, seconds=round(time.time() - t0, 1))
        say(f"image head refitted on {info['images']} training images (and their flips) of "
            f"{weights.name}: loss {info['loss_before']:.3f} -> {info['loss_after']:.3f}, "
            f"training accuracy {info['train_accuracy']:.3f} [{info['seconds']:.0f} s]")
    return info


def traces_left(cfg: RunConfig, done: int) -> int:
    """Graph traces the schedule still needs after epoch ``done``: one per later stage whose
    trainable layers differ from the stage before it (a stage on the same layers, e.g. one that
    only lowers the learning rate, reuses the traced graph)."""
    schedule = cfg.schedule
    return sum(1 for i in range(1, len(schedule))
               if schedule[i - 1][1] >= done and schedule[i][0].layers != schedule[i - 1][0].layers)


def _plan(budget: Budget, meter: BudgetMeter, cfg: RunConfig, done: int, scheduled: int) -> int:
    """Steps per epoch for the rest of the schedule (kit.budget.plan_steps), logged."""
    costs = meter.costs()
    available = budget.left() - B.reserve_s(costs) - traces_left(cfg, done) * meter.trace_s
    epochs_left = cfg.total_epochs - done
    steps = B.plan_steps(available, epochs_left, scheduled, costs)
    eta = epochs_left * (steps * costs.step_s + costs.epoch_end_s)
    say(f"plan: {epochs_left} epochs left x {steps} steps ({costs.step_s:.2f} s/step, "
        f"{costs.epoch_end_s:.0f} s per epoch end) = ETA {B.format_duration(eta)}; "
        f"budget left {B.format_duration(budget.left())}"
        + (f"; shortened from {scheduled} steps per epoch to fit" if steps < scheduled else ""))
    return steps


def _finish_history(run: Path, model) -> None:
    """Copy the training log next to config.json and draw the curves."""
    log = Path(model.log_dir) / "history.csv"
    if log.is_file() and log.resolve() != (run / "history.csv").resolve():
        write_csv(run / "history.csv", pd.read_csv(log))
    if (run / "history.csv").is_file():
        from kit.report.plots import plot_history

        plot_history(pd.read_csv(run / "history.csv"), run / "curves.png")
