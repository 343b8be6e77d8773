"""End to end with the tiny preset: data -> train -> predict -> tune -> submit -> score -> report."""
from pathlib import Path

import pandas as pd
import pytest

from kit import cli
from kit.config import get_preset
from kit.flow.submission import find_unfinished, trained_epochs

PNG = b"\x89PNG\r\n\x1a\n"


def test_trained_epochs_and_unfinished_runs(tmp_path):
    cfg = get_preset("tiny")
    run = tmp_path / "tiny-1"
    (run / "checkpoints").mkdir(parents=True)
    cfg.save(run / "config.json")
    assert trained_epochs(run) == 0
    for e in (1, 2):
        (run / "checkpoints" / f"mask_rcnn_pneumonia_{e:04d}.h5").write_bytes(b"x")
    assert trained_epochs(run) == 2
    assert find_unfinished(tmp_path, cfg) == run
    assert find_unfinished(tmp_path, get_preset("demo")) is None
    (run / "pipeline.done").write_text("x")
    assert find_unfinished(tmp_path, cfg) is None


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_flow")   # the shared flow is built once, on one worker
def test_submission_end_to_end_tiny(in_flow, capsys):
    # in_flow: `submission --preset tiny --preflight --out final/submission.csv` (conftest)
    assert "EMBEDDED SYNTHETIC" in in_flow.out
    runs = list(Path("runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    for name in ("config.json", "train_ids.csv", "val_ids.csv", "history.csv", "raw_val.csv",
                 "raw_test.csv", "postprocess.json", "report.md", "pipeline.done"):
        assert (run / name).is_file(), name
    for png in ("curves.png", "detections.png"):
        assert (run / png).read_bytes()[:8] == PNG, png
    assert trained_epochs(run) == get_preset("tiny").total_epochs
    raw = pd.read_csv(run / "raw_test.csv")
    assert list(raw.columns) == ["patientId", "score", "x", "y", "w", "h"]
    sub = Path("submissions") / f"{run.name}.csv"
    assert cli.main(["validate", "--submission", str(sub), "--data", "data/demo"]) == 0
    assert Path("final/submission.csv").read_bytes() == sub.read_bytes()
    board = pd.read_csv("submissions/leaderboard.csv")
    assert len(board) == 2   # the val submission and the demo test submission
    assert "| resnet50 |" in (run / "report.md").read_text()

    # a rerun of a finished pipeline starts a new run only with --new; an unfinished one resumes
    (run / "pipeline.done").unlink()
    (run / "raw_test.csv").unlink()
    assert cli.main(["submission", "--preset", "tiny"]) == 0
    assert list(Path("runs").iterdir()) == [run]
    assert (run / "raw_test.csv").is_file() and (run / "pipeline.done").is_file()
