"""Training Mask R-CNN: the Keras training model, layer groups, callbacks and ``train()``.

``TrainingModel`` is the functional training graph (built by model.py) whose last outputs are
the loss tensors of kit.mrcnn.losses (config.TRAINING_LOSS_WEIGHTS: Matterport's five, plus
kit_image_class_loss with the image head). Its ``compute_loss`` sums LOSS_WEIGHTS x losses plus L2
weight decay and tracks each loss so ``fit`` history and logs show rpn_class_loss ... and val_*.

``train(model, ...)`` is what ``MaskRCNN.train`` delegates to, with Matterport's semantics:
``epochs`` is the cumulative end epoch, training starts at ``model.epoch`` (the last finished
epoch; set by loading one of our checkpoints), every finished epoch is checkpointed as
``mask_rcnn_<name>_<epoch:04d>.h5`` in the legacy layout and appended to ``log_dir/history.csv``.
A process killed mid-epoch loses at most that epoch: ``load_weights(find_last())`` then ``train``
continues with the next one.

Seeds (the kit's, Matterport had none): the data generators take config.SEED (None: one drawn
from NumPy's global RNG) and the absolute epoch, so a seeded run sees the same batches whatever
the worker count or timing; the layer groups also train the kit's own ``kit_*`` layers.
"""
from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from kit.io import atomic_open
from kit.mrcnn.data import Augmentation, DataGenerator
from kit.mrcnn.config import IMAGE_CLASS_LOSS
from kit.mrcnn.losses import LOSS_NAMES

_HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)|(kit\_.*)"   # kit_*: the kit's own heads
LAYER_GROUPS = {
    "heads": _HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + _HEADS,
    "all": ".*",
}
_NO_DECAY = ("gamma", "beta")


def layer_regex(layers: str) -> str:
    """The regex of a layer group (heads, 3+, 4+, 5+, all); any other string is a regex itself.

    Layer names are matched with ``re.fullmatch``, as in Matterport.
    """
    regex = LAYER_GROUPS.get(layers, layers)
    try:
        re.compile(regex)
    except re.error as exc:
        raise ValueError(f"layers={layers!r} is neither one of {sorted(LAYER_GROUPS)} nor a "
                         f"valid regex: {exc}") from None
    return regex


class TrainingModel(keras.Model):
    """Functional training model whose loss is the weighted sum of its loss outputs + L2.

    The last ``len(loss_names)`` outputs must be float32 scalar loss tensors in ``loss_names``
    order. Total loss = sum(loss_weights[name] * loss) + weight_decay * sum over trainable
    weights except BatchNorm gamma/beta of mean(w ** 2) (Matterport's L2: sum(w^2) / size(w)).
    Each loss is tracked by a ``keras.metrics.Mean`` of the same name.
    """

    def __init__(self, inputs: Any, outputs: Any, loss_names: Sequence[str] = LOSS_NAMES,
                 loss_weights: dict[str, float] | None = None, weight_decay: float = 0.0,
                 name: str = "mask_rcnn", **kwargs: Any):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.loss_names = tuple(loss_names)
        weights = dict(loss_weights or {})
        unknown = set(weights) - set(self.loss_names)
        if unknown:
            raise ValueError(f"loss_weights has unknown losses {sorted(unknown)}; "
                             f"known: {list(self.loss_names)}")
        self.loss_weights = {n: float(weights.get(n, 1.0)) for n in self.loss_names}
        self.weight_decay = float(weight_decay)
        self.loss_trackers = [keras.metrics.Mean(name=n) for n in self.loss_names]

    def l2_loss(self) -> Any:
        """Matterport's weight decay term over the current trainable weights (float32 scalar)."""
        terms = [keras.ops.mean(keras.ops.square(keras.ops.cast(w, "float32")))
                 for w in self.trainable_weights if w.name not in _NO_DECAY]
        if not terms or self.weight_decay == 0:
            return keras.ops.zeros((), "float32")
        return self.weight_decay * keras.ops.sum(keras.ops.stack(terms))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Weighted sum of the loss outputs (+ L2 when training), scaled for tf.distribute."""
        losses = list(y_pred)[-len(self.loss_names):]
        total = keras.ops.zeros((), "float32")
        for name, loss, tracker in zip(self.loss_names, losses, self.loss_trackers):
            loss = keras.ops.cast(keras.ops.mean(loss), "float32")
            tracker.update_state(loss)
            total = total + self.loss_weights[name] * loss
        if training:
            total = total + self.l2_loss()
        return _scale_for_replicas(total)


def _scale_for_replicas(value: Any) -> Any:
    """value / number of replicas, so summing replica gradients averages them."""
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / float(replicas) if replicas > 1 else value


class Checkpoint(keras.callbacks.Callback):
    """Save the weights after every epoch through kit.mrcnn.weights.save_weights (atomic).

    ``keep_last`` > 0 deletes this run's checkpoints older than the newest ``keep_last``
    (0 keeps every epoch, as Matterport does).
    """

    def __init__(self, keras_model: keras.Model, path_template: str, keep_last: int = 0):
        super().__init__()
        self.keras_model, self.path_template = keras_model, path_template
        self.keep_last = int(keep_last)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from kit.mrcnn.weights import save_weights

        save_weights(self.keras_model, self.path_template.format(epoch=epoch + 1))
        if self.keep_last > 0:
            for old in range(1, epoch + 2 - self.keep_last):
                Path(self.path_template.format(epoch=old)).unlink(missing_ok=True)


class HistoryCSV(keras.callbacks.Callback):
    """Append each finished epoch (1-based, as the checkpoint numbers) to a CSV, atomically.

    Rows of epochs >= the one being written are replaced, so an epoch re-run after a crash
    appears once.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rows = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < epoch + 1]
        rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        fields = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
        with atomic_open(self.path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)


class NonFiniteLoss(FloatingPointError):
    """Training met a NaN / infinite loss (or weights): ``epoch`` (1-based), ``step`` (1-based,
    within the epoch), ``terms`` {name: value} of the non-finite loss terms ("weight_decay" when
    only the total is; "weights" when an update made the weights non-finite), ``loss`` (total)."""

    def __init__(self, message: str, epoch: int, step: int, terms: dict[str, float], loss: float):
        super().__init__(message)
        self.epoch, self.step, self.terms, self.loss = epoch, step, terms, loss

    @property
    def term(self) -> str:
        return ", ".join(self.terms)


class TerminateOnNaN(keras.callbacks.Callback):
    """Stop training with a one-line :class:`NonFiniteLoss` at the step whose loss is NaN/inf, and
    at an epoch's end whose weights are (the last update overflowed), before any callback after
    it (val_map, best.h5, the checkpoint) sees them: a checkpoint is never written from them."""

    def __init__(self, checkpoint_hint: str, learning_rate: float):
        super().__init__()
        self.checkpoint_hint, self.learning_rate = checkpoint_hint, learning_rate
        self.epoch, self.steps = 0, 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.steps = epoch, 0

    def _stop(self, step: int, what: str, terms: dict[str, float], loss: float) -> None:
        raise NonFiniteLoss(
            f"{what} at epoch {self.epoch + 1}, step {step} (non-finite: {', '.join(terms)}); "
            f"no checkpoint was written from these weights. Lower the learning rate (now "
            f"{self.learning_rate:g}) or GRADIENT_CLIP_NORM, check the boxes for zero sizes, then "
            f"resume from {self.checkpoint_hint}", self.epoch + 1, step, terms, loss)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.steps = batch + 1
        loss = float(logs.get("loss", 0.0))
        if math.isfinite(loss):
            return
        bad = {k: float(logs[k]) for k in (*LOSS_NAMES, IMAGE_CLASS_LOSS)
               if k in logs and not math.isfinite(float(logs[k]))}
        self._stop(batch + 1, f"training loss is {loss}", bad or {"weight_decay": loss}, loss)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        model = self.model
        if model is not None and not all(np.isfinite(keras.ops.convert_to_numpy(w)).all()
                                         for w in model.weights):
            self._stop(self.steps, "the weights are not finite after the last update",
                       {"weights": math.nan}, float((logs or {}).get("loss", math.nan)))


def _existing_checkpoints(template: str, first: int, last: int) -> list[str]:
    return [p for p in (template.format(epoch=e) for e in range(first, last + 1))
            if Path(p).exists()]


def make_optimizer(config: Any, learning_rate: float) -> keras.optimizers.Optimizer:
    """config.OPTIMIZER: SGD(momentum LEARNING_MOMENTUM) or Adam, both clipped to
    GRADIENT_CLIP_NORM; wrapped in dynamic loss scaling under MIXED_PRECISION."""
    if config.OPTIMIZER == "ADAM":
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate,
                                          clipnorm=config.GRADIENT_CLIP_NORM)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate,
                                         momentum=config.LEARNING_MOMENTUM,
                                         clipnorm=config.GRADIENT_CLIP_NORM)
    if config.MIXED_PRECISION:     # dynamic loss scaling keeps float16 gradients alive
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def can_reuse_graph(model: Any, trainable: str) -> bool:
    """Whether the last compile (and its traced train function) serves a stage training the
    layers ``trainable`` (a regex): same layers, a train function already traced, and no loss
    scaling (whose state a fresh optimizer would reset differently)."""
    keras_model = model.keras_model
    return (getattr(model, "compiled_for", None) == trainable
            and not model.config.MIXED_PRECISION
            and getattr(keras_model, "optimizer", None) is not None
            and getattr(keras_model, "train_function", None) is not None)


def restart_optimizer(optimizer: keras.optimizers.Optimizer, learning_rate: float) -> None:
    """Put ``optimizer`` back to the state of a new one at ``learning_rate``: its step count
    and slots (momentum, Adam's moments) zeroed, in place, so a traced graph keeps using it."""
    for variable in optimizer.variables:
        variable.assign(keras.ops.zeros_like(variable))
    optimizer.learning_rate = learning_rate


def train(model: Any, train_dataset: Any, val_dataset: Any | None, learning_rate: float,
          epochs: int, layers: str, augmentation: Augmentation | None = None,
          custom_callbacks: list[keras.callbacks.Callback] | None = None,
          workers: int = 1) -> keras.callbacks.History | None:
    """Train ``model`` (a MaskRCNN in training mode) from epoch ``model.epoch`` up to ``epochs``.

    train_dataset / val_dataset: kit.mrcnn.utils.Dataset (prepared); val may be None.
    layers: heads | 3+ | 4+ | 5+ | all | a regex of layer names to train (others frozen).
    Each epoch is config.STEPS_PER_EPOCH batches (validation: VALIDATION_STEPS). The optimizer is
    make_optimizer(config, learning_rate) (SGD by default), compiled without XLA in
    ``model.strategy.scope()``. Returns the History, or None when ``epochs`` is already reached.
    Refuses (FileExistsError) to overwrite checkpoints of the epochs it would train.
    """
    config = model.config
    if getattr(model, "mode", "training") != "training":
        raise ValueError("train() needs a MaskRCNN built with mode='training'")
    replicas = model.strategy.num_replicas_in_sync
    if replicas != config.GPU_COUNT:
        raise ValueError(f"config.GPU_COUNT={config.GPU_COUNT} but the strategy has {replicas} "
                         f"replicas: set GPU_COUNT={replicas} so each replica gets IMAGES_PER_GPU "
                         "images")
    if epochs <= model.epoch:
        print(f"Already trained to epoch {model.epoch} >= {epochs}; nothing to do.")
        return None
    clash = _existing_checkpoints(model.checkpoint_path, model.epoch + 1, epochs)
    if clash:
        raise FileExistsError(f"{clash[0]}: checkpoint of an epoch to be trained exists; resume "
                              "with load_weights(find_last()) or use a new model_dir")
    seed = config.SEED if config.SEED is not None else int(np.random.randint(2 ** 31 - 1))
    train_gen = DataGenerator(train_dataset, config, shuffle=True, augmentation=augmentation,
                              workers=workers, steps=config.STEPS_PER_EPOCH, seed=seed,
                              epoch=model.epoch)
    val_gen = None if val_dataset is None else DataGenerator(
        val_dataset, config, shuffle=True, workers=workers, steps=config.VALIDATION_STEPS,
        seed=seed + 1, epoch=model.epoch)
    Path(model.log_dir).mkdir(parents=True, exist_ok=True)
    # custom callbacks run first, so what they add to an epoch's logs (e.g. a metric) is in
    # history.csv; the checkpoint is written after them
    callbacks = [
        TerminateOnNaN(f"load_weights(find_last()) in {model.log_dir}", learning_rate),
        *(custom_callbacks or []),
        Checkpoint(model.keras_model, model.checkpoint_path, config.KEEP_CHECKPOINTS),
        HistoryCSV(Path(model.log_dir) / "history.csv"),
    ]
    print(f"Starting at epoch {model.epoch}. LR={learning_rate}\nCheckpoint path: "
          f"{model.checkpoint_path}")
    trainable = layer_regex(layers)
    if can_reuse_graph(model, trainable):   # a stage that only changes the lr or augmentation
        restart_optimizer(model.keras_model.optimizer, learning_rate)
        print(f"Same trainable layers as the last stage: the traced training graph is reused "
              f"(optimizer restarted at LR={learning_rate})")
    else:
        model.set_trainable(trainable)
        with model.strategy.scope():
            model.keras_model.compile(optimizer=make_optimizer(config, learning_rate),
                                      jit_compile=False)
            # the optimizer's slots made here, not inside the first traced step: a tf.function
            # that creates variables is traced twice (Keras defers the build to the trace)
            model.keras_model.optimizer.build(model.keras_model.trainable_variables)
        model.compiled_for = trainable
    # a progress bar on a terminal; one line per epoch in a log file (a Kaggle kernel's log)
    verbose = 1 if sys.stdout.isatty() else 2
    history = model.keras_model.fit(train_gen, initial_epoch=model.epoch, epochs=epochs,
                                    validation_data=val_gen, callbacks=callbacks, shuffle=False,
                                    verbose=verbose)
    model.epoch = max(model.epoch, epochs)
    return history
