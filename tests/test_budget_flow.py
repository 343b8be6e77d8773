"""The time budget end to end on this CPU: `submission --time-budget` ends in time, valid CSV."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kit import cli
from kit.budget import parse_duration
from kit.config import PRESETS

BUDGET = "2m"
TOLERANCE_S = 20.0      # interpreter start-up before the clock starts, process teardown


@pytest.mark.slow
def test_submission_finishes_within_its_time_budget(in_tmp, capsys):
    from kit.data.demo import make_dataset

    make_dataset(Path("data/demo"), n_train=120, n_test=30, size=128, seed=6)
    start = time.time()
    assert cli.main(["submission", "--preset", "demo", "--time-budget", BUDGET]) == 0
    took = time.time() - start
    out = capsys.readouterr().out
    assert took <= parse_duration(BUDGET) + TOLERANCE_S, out[-3000:]
    (run,) = Path("runs").iterdir()
    state = json.loads((run / "train_state.json").read_text())
    # the demo schedule (12 epochs of 40 steps) does not fit in 2 minutes on a CPU
    assert state["stopped_by_budget"] or \
        state["steps_per_epoch"]["last"] < PRESETS["demo"].steps_per_epoch
    assert not state["complete"] and state["epochs_done"] >= 1    # it trained, then stopped
    assert "time budget 2m00s for the whole flow" in out and "reserve" in out
    assert "finished with" in out
    sub = Path("submissions") / f"{run.name}.csv"
    assert cli.main(["validate", "--submission", str(sub), "--data", "data/demo"]) == 0
    assert (run / "pipeline.done").is_file()
