"""kit.budget: durations, the reserve, the shortened schedule and the stop rule (exact)."""
from __future__ import annotations

import pytest

from kit import budget as B
from kit.errors import KitError


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("45m", 2700), ("8h15m", 29700), ("1h30m20s", 5420), ("2.5h", 9000),
    (" 8H ", 28800), (120, 120), (2.5, 2.5), ("0.5s", 0.5)])
def test_parse_duration(text, seconds):
    assert B.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "15x", "1m1h", "1h1h", "-5m", "0s", "5 minutes",
                                  "h", "1h5", "45", "3600", "2.5", " 90 "])
def test_parse_duration_rejects(text):
    with pytest.raises(KitError, match="time budget"):
        B.parse_duration(text)


@pytest.mark.parametrize("seconds, text", [(29700, "8h15m"), (725, "12m05s"), (42.9, "42s"),
                                           (0, "0s"), (-90, "-1m30s"), (3600, "1h00m")])
def test_format_duration(seconds, text):
    assert B.format_duration(seconds) == text


def test_budget_deadline_and_env(monkeypatch):
    b = B.Budget.start("10m", now=1000.0)
    assert (b.deadline, b.seconds, b.left(now=1100.0)) == (1600.0, 600.0, 500.0)
    monkeypatch.delenv(B.BUDGET_ENV, raising=False)
    monkeypatch.delenv("KIT_TIME_BUDGET_DEADLINE", raising=False)
    assert B.from_arg(None) is None
    monkeypatch.setenv(B.BUDGET_ENV, "1h")
    assert B.from_arg(None, now=0.0) == B.Budget(3600.0, 3600.0)
    for key, value in b.to_env().items():       # a child step keeps the parent's deadline
        monkeypatch.setenv(key, value)
    assert B.from_arg(None, now=1500.0) == B.Budget(1600.0, 600.0)
    assert B.from_arg("2m", now=0.0) == B.Budget(120.0, 120.0)   # the flag wins


COSTS = B.Costs(step_s=2.0, epoch_end_s=10.0, detect_s=0.5, build_s=20.0, predict_images=100,
                tta_passes=2, fixed_s=60.0)


def test_reserve_by_hand():
    # 1.25 * (20 + 0.5 * 100 * 2) + 60 = 1.25 * 120 + 60
    assert B.reserve_s(COSTS) == 210.0


def test_plan_keeps_the_schedule_when_it_fits():
    # 3 epochs x (40 steps x 2 s + 10 s) = 270 s
    assert B.plan_steps(270.0, 3, 40, COSTS) == 40
    assert B.plan_steps(10_000.0, 3, 40, COSTS) == 40


def test_plan_shortens_every_epoch_equally():
    # 269 s for 3 epochs: floor((269 / 3 - 10) / 2) = floor(39.83) = 39
    assert B.plan_steps(269.0, 3, 40, COSTS) == 39
    # 150 s: floor((50 - 10) / 2) = 20
    assert B.plan_steps(150.0, 3, 40, COSTS) == 20
    # nothing fits: at least one step per epoch (the stop rule ends training)
    assert B.plan_steps(5.0, 3, 40, COSTS) == 1
    assert B.plan_steps(-50.0, 3, 40, COSTS) == 1
    assert B.plan_steps(100.0, 0, 40, COSTS) == 40


def test_stop_rule_boundary():
    reserve = B.reserve_s(COSTS)                 # 210; one more step + epoch end = 12
    assert not B.should_stop(reserve + 12.0, COSTS)
    assert B.should_stop(reserve + 11.999, COSTS)
    assert B.should_stop(0.0, COSTS)


@pytest.mark.parametrize("text", ["45", " 45 ", "2.5"])
def test_a_bare_number_is_refused_with_the_units_to_choose_from(text):
    s = text.strip()
    with pytest.raises(KitError) as info:
        B.parse_duration(text)
    assert str(info.value) == f"time budget {text!r} has no unit: write {s}s, {s}m or {s}h"


def test_the_environment_a_parent_hands_down_has_units(monkeypatch):
    for seconds in (600.0, 29700.0, 2_000_000.0, 90.25):
        env = B.Budget(1000.0 + seconds, seconds).to_env()
        assert env[B.BUDGET_ENV].endswith("s") and B.parse_duration(env[B.BUDGET_ENV]) == seconds
    monkeypatch.delenv("KIT_TIME_BUDGET_DEADLINE", raising=False)
    monkeypatch.setenv(B.BUDGET_ENV, "45")
    with pytest.raises(KitError, match="^KIT_TIME_BUDGET: time budget '45' has no unit"):
        B.from_arg(None)


@pytest.mark.parametrize("command", ["submission", "train"])
def test_time_budget_bare_number_is_one_line_exit_2(command, in_tmp, capsys):
    from kit import cli

    assert cli.main([command, "--time-budget", "45"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: time budget '45' has no unit: write 45s, 45m or 45h\n"
