"""The time budget: one deadline for the whole flow, and the arithmetic training plans with.

``--time-budget DURATION`` (or KIT_TIME_BUDGET) gives the flow a wall-clock deadline. Training
owns the plan, because only it can give time back: it measures its own step time and the detect
time per image, reserves what the rest of the flow needs (:func:`reserve_s`), and

1. **shortens the schedule** (:func:`plan_steps`): when the remaining epochs at their scheduled
   length do not fit in ``time left - reserve``, every remaining epoch gets the same smaller
   number of steps, so every stage (heads, 4+, all ...) and every epoch still runs, each shorter;
2. **stops** (:func:`should_stop`): after any step, when the next step plus the end-of-epoch
   work (validation, val_map, checkpoint) would eat into the reserve, training stops there; the
   epoch's checkpoint is written even mid-epoch, and the flow goes on to predict.

Everything here is plain arithmetic on seconds, exactly tested; no TensorFlow.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

from kit.errors import KitError

BUDGET_ENV = "KIT_TIME_BUDGET"
SAFETY = 1.25          # factor on measured detect/build times in the reserve
FIXED_S = 60.0         # tune + submit + score + report, measured at ~25 s on 2 CPU cores
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def add_budget_arg(p) -> None:
    """``--time-budget DURATION`` on a command's argparse parser."""
    p.add_argument("--time-budget", metavar="DURATION", default=None,
                   help="wall-clock budget of the whole flow with its unit, e.g. 90s, 45m, 8h15m "
                        f"(a bare number is refused; default: ${BUDGET_ENV}, else none): "
                        "training leaves predict, tune, submit and report their time, shortening "
                        "epochs or stopping at a checkpoint (see kit/budget.py)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``90s``, ``45m``, ``8h15m``, ``1h30m20s`` or ``2.5h``; a Python number is seconds.

    Text needs its units: a bare ``45`` is refused (45 seconds? minutes?)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", s):
            raise KitError(f"time budget {text!r} has no unit: write {s}s, {s}m or {s}h")
        parts = _PART.findall(s)
        units = [u for _, u in parts]
        if (not parts or "".join(n + u for n, u in parts) != s
                or units != sorted(units, key="hms".index) or len(set(units)) != len(units)):
            raise KitError(f"time budget {text!r}: write it like 90s, 45m or 8h15m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise KitError(f"time budget {text!r} must be a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """``8h15m``, ``12m05s``, ``42s`` (rounded down to the second; negative shows as ``-...``)."""
    sign, s = ("-" if seconds < 0 else ""), int(abs(seconds))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    if h:
        return f"{sign}{h}h{m:02d}m"
    if m:
        return f"{sign}{m}m{sec:02d}s"
    return f"{sign}{sec}s"


@dataclass(frozen=True)
class Budget:
    """A wall-clock deadline (``time.time()`` seconds, so it holds across processes)."""

    deadline: float
    seconds: float

    @classmethod
    def start(cls, duration: str | float, now: float | None = None) -> "Budget":
        seconds = parse_duration(duration)
        return cls(deadline=(time.time() if now is None else now) + seconds, seconds=seconds)

    def left(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)

    def to_env(self) -> dict[str, str]:
        """Environment that hands this deadline to a child step (see :func:`from_env`)."""
        seconds = f"{self.seconds:.3f}".rstrip("0").rstrip(".")
        return {BUDGET_ENV: f"{seconds}s", "KIT_TIME_BUDGET_DEADLINE": f"{self.deadline:.3f}"}


def from_arg(value: str | None, now: float | None = None) -> Budget | None:
    """The budget of ``--time-budget VALUE``, else of KIT_TIME_BUDGET, else None.

    A deadline already fixed by a parent step (KIT_TIME_BUDGET_DEADLINE) is kept, so the
    budget of a kernel counts from the kernel's start, not from each step's."""
    if value:
        return Budget.start(value, now)
    if not os.environ.get(BUDGET_ENV):
        return None
    try:
        budget = Budget.start(os.environ[BUDGET_ENV], now)
    except KitError as exc:
        raise KitError(f"{BUDGET_ENV}: {exc}") from None
    deadline = os.environ.get("KIT_TIME_BUDGET_DEADLINE")
    return Budget(float(deadline), budget.seconds) if deadline else budget


@dataclass(frozen=True)
class Costs:
    """Measured (or estimated) seconds the plan works with.

    step_s: one training step; epoch_end_s: validation loss + val_map + checkpoint of one epoch;
    detect_s: one detect() pass of one image; build_s: building + loading an inference model;
    predict_images: images predict will see (val + test); tta_passes: detect passes per image
    (2 with flip TTA); fixed_s: tune + submit + score + report."""

    step_s: float
    epoch_end_s: float
    detect_s: float
    build_s: float
    predict_images: int
    tta_passes: int = 2
    fixed_s: float = FIXED_S


def reserve_s(c: Costs) -> float:
    """Seconds training leaves for the rest of the flow: SAFETY x (build + detect of every
    predicted image, every TTA pass) + fixed_s."""
    return SAFETY * (c.build_s + c.detect_s * c.predict_images * c.tta_passes) + c.fixed_s


def plan_steps(available_s: float, epochs: int, steps_per_epoch: int, c: Costs) -> int:
    """Steps per epoch for the ``epochs`` remaining epochs so they fit in ``available_s``.

    The scheduled ``steps_per_epoch`` when it fits, else the same smaller count for every
    epoch: floor((available / epochs - epoch_end_s) / step_s), at least 1 (the stop rule then
    ends training where even that does not fit)."""
    if epochs <= 0:
        return steps_per_epoch
    if epochs * (steps_per_epoch * c.step_s + c.epoch_end_s) <= available_s:
        return steps_per_epoch
    steps = math.floor((available_s / epochs - c.epoch_end_s) / max(c.step_s, 1e-9))
    return int(min(steps_per_epoch, max(1, steps)))


def should_stop(left_s: float, c: Costs) -> bool:
    """After a step: stop when the next step and the end of the epoch would eat the reserve."""
    return left_s - reserve_s(c) < c.step_s + c.epoch_end_s
