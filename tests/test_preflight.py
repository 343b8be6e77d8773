"""Preflight: the flow on 2 images before the long run; one error line when anything fails."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kit import cli, paths
from kit.flow import preflight
from kit.config import get_preset


@pytest.fixture
def demo(in_tmp):
    from kit.data.demo import make_dataset

    make_dataset(Path("data/demo"), n_train=16, n_test=4, size=64, seed=2)
    return Path("data/demo")


def test_subset_has_two_train_images_one_positive_and_two_test_images(demo, tmp_path):
    out = preflight.make_subset(demo, tmp_path / "sub")
    labels = pd.read_csv(out / paths.TRAIN_LABELS)
    assert labels.patientId.nunique() == 2
    assert set(labels.groupby("patientId").Target.max()) == {0, 1}
    assert len(pd.read_csv(out / paths.SAMPLE_SUBMISSION)) == 2
    assert len(list((out / paths.TRAIN_IMAGES).iterdir())) == 2
    assert all(p.is_symlink() for p in (out / paths.TEST_IMAGES).iterdir())
    info = pd.read_csv(out / paths.CLASS_INFO)
    assert set(info.patientId) == set(labels.patientId)


def test_quick_overrides_keep_every_stage_at_one_epoch():
    cfg = get_preset("kaggle")
    quick = get_preset("kaggle", preflight.quick_overrides(cfg))
    assert [s.layers for s in quick.stages] == [s.layers for s in cfg.stages]
    assert [s.epochs for s in quick.stages] == [1] * len(cfg.stages)
    assert (quick.steps_per_epoch, quick.n_val, quick.image_size, quick.backbone,
            quick.tta) == (1, 1, cfg.image_size, cfg.backbone, cfg.tta)


def test_failed_preflight_is_one_line_and_trains_nothing(demo, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "MODULES", ("numpy", "no_such_module_for_the_kit"))
    code = cli.main(["submission", "--preset", "tiny", "--preflight", "--workdir", "work"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: preflight failed at imports: ModuleNotFoundError")
    assert "no_such_module_for_the_kit" in err[0]
    assert not Path("work/runs").exists()                       # no training started
    trace = Path("work/preflight-error.txt").read_text()
    assert "Traceback" in trace
    assert not (Path("work") / preflight.SUBSET).exists()


def test_a_failing_flow_is_one_line_naming_the_cause(demo, capsys):
    for dcm in (demo / paths.TEST_IMAGES).glob("*.dcm"):     # unreadable test images
        dcm.write_bytes(b"not a dicom")
    code = cli.main(["submission", "--preset", "tiny", "--preflight", "--workdir", "work"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    # prepare lists each unreadable file first; the command ends with ONE summary line
    assert sum(line.startswith("error: preflight failed") for line in err) == 1
    assert err[-1].startswith("error: preflight failed at flow: KitError:")
    assert "test image(s) unreadable" in err[-1] and "preflight-error.txt" in err[-1]
    assert not Path("work/runs").exists() and not (Path("work") / preflight.SUBSET).exists()


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_flow")   # the shared flow is built once, on one worker
def test_preflight_then_the_flow(in_flow):
    # in_flow: `submission --preset tiny --preflight` in its own folder (conftest), the flow that
    # test_pipeline checks end to end; the preflight's scratch is the runs folder
    out = in_flow.out
    for expected in ("preflight: python 3.", "GPUs: 0", "transfer syntax 1.2.840.10008.1.2.4.50",
                     "free disk in working", "preflight passed in"):
        assert expected in out, expected
    assert out.index("preflight passed") < out.index("train: tiny on data/demo")
    assert not (Path("runs") / preflight.SUBSET).exists()        # the scratch flow is deleted
    assert not list(paths.CACHE_DIR.glob(f"{preflight.DATA}-*"))
    runs = list(Path("runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "pipeline.done").is_file()
    assert len(list(Path("submissions").glob("*.csv"))) == 2   # the run's + leaderboard
