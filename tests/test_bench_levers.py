"""bench/levers.py on the shared tiny flow's run: every lever row is tuned with its own grid on a
scratch copy, scored on the hidden test labels, and the run itself is left as it was."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_bench


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_flow")   # the shared flow is built once, on one worker
def test_each_row_tunes_its_own_grid_and_leaves_the_run_alone(in_flow, tmp_path, capsys):
    (run,) = Path("runs").iterdir()
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert load_bench("levers").main(["--runs", str(run), "--data", "data/demo",
                           "--scratch", str(tmp_path / "scratch")]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("{"):])["rows"]
    assert list(rows) == ["threshold", "+scale", "+flip", "+boxes_gate", "+classifier",
                          "all_but_flip"]          # one run: no ensemble rows
    chosen = {name: row["runs"][str(run)]["settings"] for name, row in rows.items()}
    assert chosen["threshold"]["box_scale"] == 1.0 and chosen["+scale"]["image_threshold"] == 0
    assert all(chosen[n]["opacity_threshold"] == 0 for n in list(chosen)[:4])
    assert all(chosen[n]["max_boxes"] == 10 for n in list(chosen)[:3])
    for row in rows.values():
        got = row["runs"][str(run)]
        assert 0 <= got["val_map"] <= 1
        assert got["val_crossfit"] is None or 0 <= got["val_crossfit"] <= 1
    # the cross-fit tuned each half of the val images on its own, for every row
    halves = sorted((tmp_path / "scratch").rglob("half*/postprocess.json"))
    assert len(halves) == 2 * len(rows)
    # the tta=none tables were predicted in the scratch copy, not in the run
    none = tmp_path / "scratch" / f"0-{run.name}" / "tta-none"
    assert (none / "raw_val.csv").is_file() and (none / "raw_test.csv").is_file()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
