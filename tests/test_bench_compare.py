"""bench/compare.py: ratio arithmetic and the no-peer-venv answer (no torch needed)."""
import json

import pytest
from conftest import load_bench



def _compare():
    return load_bench("compare")


def _median(s):
    return {"median_s": s, "min_s": s, "max_s": s}


def test_ratios_are_ours_over_theirs_per_size():
    ours_inf = {"results": [{"size": 256, "with_masks": _median(0.3)},
                            {"size": 512, "with_masks": _median(1.2)}]}
    ours_train = [{"image_size": 256, "seconds_per_step": 1.0},
                  {"image_size": 512, "seconds_per_step": 3.0}]
    theirs = {"inference": [{"size": 256, "with_masks": _median(0.6)},
                            {"size": 512, "with_masks": _median(1.0)}],
              "train": [{"size": 256, "step": _median(2.0)}, {"size": 512, "step": _median(2.0)}]}
    out = _compare().ratios(ours_inf, ours_train, theirs)
    assert out["256"]["inference_ratio"] == 0.5
    assert out["512"]["inference_ratio"] == 1.2
    assert out["256"]["train_step_ratio"] == 0.5
    assert out["512"]["train_step_ratio"] == 1.5
    theirs["train"][1]["size"] = 384
    with pytest.raises(ValueError, match="different sizes"):
        _compare().ratios(ours_inf, ours_train, theirs)


def test_without_peer_venv_it_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    module = _compare()
    monkeypatch.setattr(module, "PEER_PYTHON", tmp_path / "missing" / "python")
    assert module.main([]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert "make bench-peers" in answer["skipped"]
