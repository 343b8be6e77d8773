"""Training callbacks of the kit: the competition metric each epoch, and the time budget.

- :class:`EpochMetric`: at each epoch end, copies the training weights into an inference model,
  detects on (a seeded subset of) the validation images, scores the competition mAP with the best
  of a small score-threshold grid (``val_map`` in history.csv and the Keras logs), and keeps the
  best checkpoint by val_map as runs/<run>/best.h5 (+ best.json), beside the newest N epochs.
- :class:`BudgetMeter`: measures step time and end-of-epoch time, and stops training at the last
  step that leaves the reserve of kit.budget (the epoch's checkpoint is still written).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from kit import budget as B
from kit.io import write_json
from kit.log import say
from kit.runs import BEST_INFO, BEST_WEIGHTS

QUICK_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 20))   # 0.10 .. 0.95


def copy_weights(source: keras.Model, target: keras.Model) -> int:
    """Copy every weighted layer of ``target`` from the same-named layer of ``source``
    (nested models walked); returns the number of layers copied. Names that the training
    graph lacks raise KeyError: both models must be built from one config."""
    from kit.mrcnn.model import walk_layers

    by_name = {layer.name: layer for layer in walk_layers(source)
               if not isinstance(layer, keras.Model) and layer.weights}
    n = 0
    for layer in walk_layers(target):
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        layer.set_weights(by_name[layer.name].get_weights())
        n += 1
    return n


def quick_map(raw, gt: dict[str, np.ndarray]) -> tuple[float, float]:
    """(best mAP, its score threshold) over QUICK_THRESHOLDS, box scale 1, up to 4 boxes, no
    image gate: a fixed, cheap post-processing so epochs compare on the competition metric."""
    from kit.score.tune import sweep

    result = sweep(raw, gt, thresholds=QUICK_THRESHOLDS, scales=(1.0,), max_boxes=(4,),
                   image_thresholds=(0.0,))
    values = np.where(np.isnan(result.map), -np.inf, result.map).ravel()
    best = int(np.argmax(values))
    return (float(values[best]) if np.isfinite(values[best]) else 0.0), QUICK_THRESHOLDS[best]


def subset_ids(val_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` val images drawn with ``seed`` (all of them when n is 0 or too large), in val order."""
    if not n or n >= len(val_ids):
        return list(val_ids)
    pick = np.sort(np.random.default_rng(seed).permutation(len(val_ids))[:n])
    return [val_ids[i] for i in pick]


class EpochMetric(keras.callbacks.Callback):
    """val_map at each epoch end (see the module docstring); ``seconds`` is its last cost and
    ``detect_s`` the measured detect time per image (one pass)."""

    def __init__(self, train_model, infer_model, ids: Sequence[str], load_image,
                 gt: dict[str, np.ndarray], side: int, run: Path,
                 probe_ids: Sequence[str] = (), first_epoch: int = 1):
        """``ids``: the val images scored each epoch (none: val_map is skipped);
        ``probe_ids``: images to time detect on when there is no val image; ``first_epoch``:
        the first epoch (1-based) scored; earlier ones are not (nor candidates for best.h5)."""
        super().__init__()
        self.first_epoch, self.said_first = int(first_epoch), False
        self.probe_ids = list(probe_ids)
        self.train_model, self.infer_model = train_model, infer_model
        self.ids, self.load_image, self.side = list(ids), load_image, side
        self.gt = {pid: gt.get(pid, np.zeros((0, 4))) for pid in self.ids}
        self.run = Path(run)
        info = self.run / BEST_INFO
        self.best = json.loads(info.read_text())["val_map"] if info.is_file() else -1.0
        self.seconds = 0.0
        self.detect_s: float | None = None

    def measure(self) -> float:
        """Detect time per image (seconds, one pass) on one full batch, after a warm-up call
        (detect pads a short batch, so a partial one would overstate the time per image)."""
        from kit.infer.predict import detect_raw

        n = self.infer_model.config.BATCH_SIZE
        pool = self.ids or self.probe_ids
        ids = [pool[i % len(pool)] for i in range(n)]
        images = [self.load_image(pid) for pid in ids]
        detect_raw(self.infer_model, images, ids, self.side, tta="none")
        start = time.perf_counter()
        detect_raw(self.infer_model, images, ids, self.side, tta="none")
        self.detect_s = (time.perf_counter() - start) / n
        return self.detect_s

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from kit.mrcnn.weights import save_weights
        from kit.infer.predict import detect_raw

        if not self.ids:
            return
        if epoch + 1 < self.first_epoch:
            if not self.said_first:
                say(f"epoch {epoch + 1}: not scored; val_map from epoch {self.first_epoch} on "
                    "(val_map_from)")
                self.said_first = True
            return
        start = time.perf_counter()
        copy_weights(self.train_model.keras_model, self.infer_model.keras_model)
        images = [self.load_image(pid) for pid in self.ids]
        t_detect = time.perf_counter()
        raw, _ = detect_raw(self.infer_model, images, self.ids, self.side, tta="none")
        self.detect_s = (time.perf_counter() - t_detect) / max(len(images), 1)
        value, threshold = quick_map(raw, self.gt)
        if logs is not None:
            logs["val_map"] = value
        note = ""
        if value > self.best:
            self.best = value
            save_weights(self.train_model.keras_model, str(self.run / BEST_WEIGHTS))
            write_json(self.run / BEST_INFO, {"epoch": epoch + 1, "val_map": value,
                                              "score_threshold": threshold,
                                              "images": len(self.ids)})
            note = " (best so far: best.h5)"
        self.seconds = time.perf_counter() - start
        say(f"epoch {epoch + 1}: val_map {value:.4f} at score >= {threshold:.2f} on "
            f"{len(self.ids)} val images{note} [{self.seconds:.1f} s]")


class Warmup(keras.callbacks.Callback):
    """Linear learning-rate warm-up over a run's first ``steps`` training steps: step k (counted
    from the run's first epoch, ``steps_per_epoch`` per epoch) trains at
    ``learning_rate * (k + 1) / steps``, then at ``learning_rate`` again. Off by default: on the
    demo at lr 1e-3, 80 steps of ramp did not stop a seed from stalling (bench/RESULTS.md)."""

    def __init__(self, learning_rate: float, steps: int, steps_per_epoch: int):
        super().__init__()
        self.learning_rate, self.steps = float(learning_rate), int(steps)
        self.steps_per_epoch, self.epoch = int(steps_per_epoch), 0

    def rate(self, step: int) -> float:
        """The learning rate of (0-based) run step ``step``."""
        return self.learning_rate * min(1.0, (step + 1) / self.steps) if self.steps else \
            self.learning_rate

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        step = self.epoch * self.steps_per_epoch + batch
        if step <= self.steps:          # the step after the ramp puts the full rate back
            self.model.optimizer.learning_rate = self.rate(step)


class BudgetMeter(keras.callbacks.Callback):
    """Measures steps and epoch ends; plans the schedule and stops training by kit.budget.

    The first batch of each ``fit`` (graph tracing) is timed apart as ``trace_s``, not as a
    step. After PLAN_AFTER measured steps, ``planner()`` (if given) returns the steps per epoch
    for the rest of the schedule (``epoch_limit``); when that is fewer than the running epoch's,
    the epoch ends there and the caller continues with the new length. Whenever the stop rule
    holds, training stops (``stopped_at``); the epoch's checkpoint is still written. The end of
    an epoch before ``first_scored`` (1-based, val_map_from) is counted with the val_map pass it
    skipped (``epoch_end_guess_s``), as every later epoch will run one."""

    PLAN_AFTER = 5

    def __init__(self, budget: B.Budget | None, detect_s: float, build_s: float,
                 predict_images: int, tta_passes: int, epoch_end_guess_s: float = 0.0,
                 val_steps: int = 0, planner: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.time, first_scored: int = 1):
        super().__init__()
        self.budget, self.clock, self.planner = budget, clock, planner
        self.detect_s, self.build_s = detect_s, build_s
        self.predict_images, self.tta_passes = predict_images, tta_passes
        self.epoch_end_guess_s, self.val_steps = epoch_end_guess_s, val_steps
        self.first_scored, self._epoch = int(first_scored), 0
        self.steps: list[float] = []
        self.epoch_ends: list[float] = []
        self.trace_s = 0.0
        self.stopped_at: int | None = None
        self.epoch_limit: int | None = None
        self._t = self._last_batch_end = None
        self._first = True

    @property
    def step_s(self) -> float | None:
        return statistics.median(self.steps[-50:]) if self.steps else None

    def costs(self) -> B.Costs:
        """The current Costs; before an epoch end was measured, it is guessed as val_map's
        detection plus half a training step per validation step."""
        step = self.step_s or 0.0
        epoch_end = (self.epoch_ends[-1] if self.epoch_ends
                     else self.epoch_end_guess_s + 0.5 * step * self.val_steps)
        return B.Costs(step_s=step, epoch_end_s=epoch_end, detect_s=self.detect_s,
                       build_s=self.build_s, predict_images=self.predict_images,
                       tta_passes=self.tta_passes)

    def on_train_begin(self, logs=None):
        self._first, self._last_batch_end = True, None

    def on_epoch_begin(self, epoch, logs=None):
        self._end_epoch_timer()
        self._epoch = epoch

    def on_train_end(self, logs=None):
        self._end_epoch_timer()

    def _end_epoch_timer(self) -> None:
        if self._last_batch_end is not None:
            took = self.clock() - self._last_batch_end
            unscored = self._epoch + 1 < self.first_scored     # its val_map was skipped
            self.epoch_ends.append(took + (self.epoch_end_guess_s if unscored else 0.0))
            self._last_batch_end = None

    def on_train_batch_begin(self, batch, logs=None):
        self._t = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        took = now - self._t
        if self._first:
            # a reused graph's first batch is a plain step: keep the longest trace seen
            self.trace_s, self._first = max(self.trace_s, took), False
        else:
            self.steps.append(took)
        self._last_batch_end = now
        if self.budget is None or self.step_s is None:
            return
        if self.planner is not None and self.epoch_limit is None \
                and len(self.steps) >= self.PLAN_AFTER:
            self.epoch_limit = self.planner()
        if B.should_stop(self.budget.left(now), self.costs()):
            self.model.stop_training = True
            self.stopped_at = batch + 1
            say(f"time budget: stopping after step {batch + 1} of this epoch with "
                f"{B.format_duration(self.budget.left(now))} left (reserve "
                f"{B.format_duration(B.reserve_s(self.costs()))} for predict/tune/submit/report);"
                " the epoch's checkpoint is written now")
        elif (self.epoch_limit is not None and batch + 1 >= self.epoch_limit
              and batch + 1 < int((self.params or {}).get("steps") or 0)):
            self.model.stop_training = True
            say(f"plan: this epoch ends at step {batch + 1}, like every later one")
