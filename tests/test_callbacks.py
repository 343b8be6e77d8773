"""kit.train.callbacks: the budget meter's timing and stop rule (fake clock), quick_map, subsets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kit import budget as B
from kit.train.callbacks import BudgetMeter, Warmup, quick_map, subset_ids


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeModel:
    stop_training = False


def run_steps(meter, clock, durations, epoch=0):
    meter.on_epoch_begin(epoch)
    for i, d in enumerate(durations):
        meter.on_train_batch_begin(i)
        clock.t += d
        meter.on_train_batch_end(i)
        if meter.model.stop_training:
            return i + 1
    return len(durations)


def make_meter(budget_s, clock):
    meter = BudgetMeter(B.Budget(clock.t + budget_s, budget_s), detect_s=0.5, build_s=20.0,
                        predict_images=100, tta_passes=2, epoch_end_guess_s=4.0, clock=clock)
    meter.set_model(FakeModel())
    meter.on_train_begin()
    return meter


def test_first_batch_is_tracing_and_steps_are_the_median():
    clock = Clock()
    meter = make_meter(10_000.0, clock)
    assert run_steps(meter, clock, [30.0, 2.0, 2.0, 3.0, 2.0]) == 5
    assert meter.trace_s == 30.0 and meter.step_s == 2.0
    clock.t += 7.0                      # validation + val_map + checkpoint
    meter.on_epoch_begin(1)
    assert meter.epoch_ends == [7.0]
    costs = meter.costs()
    assert (costs.step_s, costs.epoch_end_s, costs.predict_images) == (2.0, 7.0, 100)
    assert meter.stopped_at is None and not meter.model.stop_training



def test_an_unscored_epoch_end_counts_the_val_map_it_skipped():
    clock = Clock()
    meter = BudgetMeter(B.Budget(clock.t + 10_000.0, 10_000.0), detect_s=0.5, build_s=20.0,
                        predict_images=100, tta_passes=2, epoch_end_guess_s=4.0, clock=clock,
                        first_scored=2)
    meter.set_model(FakeModel())
    meter.on_train_begin()
    run_steps(meter, clock, [30.0, 2.0, 2.0], epoch=0)
    clock.t += 1.0                      # epoch 1: checkpoint only (val_map from epoch 2)
    run_steps(meter, clock, [2.0, 2.0], epoch=1)
    assert meter.epoch_ends == [1.0 + 4.0] and meter.costs().epoch_end_s == 5.0
    clock.t += 6.0                      # epoch 2: scored, measured as it is
    meter.on_train_end()
    assert meter.epoch_ends == [5.0, 6.0] and meter.costs().epoch_end_s == 6.0

def test_stops_at_the_last_step_that_leaves_the_reserve():
    clock = Clock()
    # reserve = 1.25 * (20 + 0.5 * 100 * 2) + 60 = 210 s; a step 2 s, the epoch end guessed at 4 s
    meter = make_meter(210.0 + 4.0 + 2.0 + 30.0 + 10 * 2.0, clock)
    steps = run_steps(meter, clock, [30.0] + [2.0] * 40)
    # after the trace (30 s) and k steps, left = 36 + 20 - 2k; stop once left - 210 < 6 -> k = 11
    assert steps == 12 and meter.stopped_at == 12 and meter.model.stop_training
    assert meter.budget.left(clock.t) - B.reserve_s(meter.costs()) >= 0


def test_no_budget_never_stops():
    clock = Clock()
    meter = BudgetMeter(None, 0.5, 20.0, 100, 2, clock=clock)
    meter.set_model(FakeModel())
    meter.on_train_begin()
    assert run_steps(meter, clock, [1.0] * 20) == 20 and meter.stopped_at is None


def test_quick_map_takes_the_best_threshold():
    gt = {"a": np.array([[100.0, 100.0, 200.0, 200.0]]), "b": np.zeros((0, 4))}
    raw = pd.DataFrame({"patientId": ["a", "b"], "score": [0.9, 0.3],
                        "x": [100.0, 500.0], "y": [100.0, 500.0], "w": [200.0, 50.0],
                        "h": [200.0, 50.0]})
    value, threshold = quick_map(raw, gt)
    # threshold above 0.3 drops b's false box: a scores 1, b is excluded -> mAP 1.0
    assert value == 1.0 and threshold == 0.35
    assert quick_map(raw.iloc[:0], gt) == (0.0, 0.1)


@pytest.mark.parametrize("n", [0, 3, 10])
def test_subset_ids_is_seeded_and_keeps_order(n):
    ids = [f"p{i}" for i in range(8)]
    pick = subset_ids(ids, n, seed=5)
    assert pick == subset_ids(ids, n, seed=5)
    assert len(pick) == (n if 0 < n < 8 else 8)
    assert pick == [p for p in ids if p in pick]
    if n == 3:
        assert pick != subset_ids(ids, n, seed=6) or pick != subset_ids(ids, n, seed=7)


def test_plan_after_five_steps_ends_this_epoch_at_the_planned_length():
    clock = Clock()
    calls = []
    meter = BudgetMeter(B.Budget(clock.t + 10_000.0, 10_000.0), 0.5, 20.0, 100, 2, clock=clock,
                        planner=lambda: calls.append(len(meter.steps)) or 8)
    meter.set_model(FakeModel())
    meter.set_params({"steps": 40, "epochs": 12})
    meter.on_train_begin()
    steps = run_steps(meter, clock, [30.0] + [2.0] * 39)
    assert calls == [5]                       # planned once, after 5 measured steps
    assert meter.epoch_limit == 8 and steps == 8 and meter.model.stop_training
    assert meter.stopped_at is None           # a shorter epoch, not a budget stop
    # the next fit runs epochs of 8 steps: the limit does not stop them early
    meter.set_model(FakeModel())
    meter.set_params({"steps": 8, "epochs": 12})
    meter.on_train_begin()
    assert run_steps(meter, clock, [30.0] + [2.0] * 7, epoch=1) == 8
    assert not meter.model.stop_training and calls == [5]


def test_warmup_ramps_the_lr_over_the_runs_first_steps_then_leaves_it():
    from types import SimpleNamespace

    model = SimpleNamespace(optimizer=SimpleNamespace(learning_rate=0.01))
    ramp = Warmup(0.01, steps=4, steps_per_epoch=3)
    ramp.set_model(model)
    seen = []
    for epoch in (0, 1):
        ramp.on_epoch_begin(epoch)
        for batch in range(3):
            ramp.on_train_batch_begin(batch)
            seen.append(model.optimizer.learning_rate)
            model.optimizer.learning_rate = -1.0        # what the step would not do: marks it
    # steps 0..3 ramp to the full rate; step 4 puts the full rate back; step 5 is left alone
    assert seen == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, -1.0])
    assert Warmup(0.01, steps=0, steps_per_epoch=3).rate(0) == 0.01


def test_epochs_before_val_map_from_are_not_scored_nor_kept(tmp_path, capsys):
    from kit.train.callbacks import EpochMetric

    class Untouchable:          # scoring an epoch would copy weights and detect: it must not
        def __getattr__(self, name):
            raise AssertionError(f"an unscored epoch used the model ({name})")

    metric = EpochMetric(Untouchable(), Untouchable(), ["a", "b"], load_image=None,
                         gt={"a": np.zeros((0, 4))}, side=64, run=tmp_path, first_epoch=3)
    for epoch in (0, 1):
        logs = {"loss": 1.0}
        metric.on_epoch_end(epoch, logs)
        assert logs == {"loss": 1.0}
    assert not any(tmp_path.iterdir())                        # no best.h5 / best.json
    out = capsys.readouterr().out
    assert out.count("not scored; val_map from epoch 3 on (val_map_from)") == 1, out
