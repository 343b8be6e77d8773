"""``folds --k 2`` on the tiny preset: two fold runs, their out-of-fold ensemble tuned into
postprocess.json, finished folds skipped on a rerun; then ``predict --images`` with that
ensemble's first fold on a folder holding a damaged DICOM."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from kit import cli, paths

SHORT = ["--set", 'stages=[{"layers": "heads", "epochs": 1}]', "--set", "image_head_refit=0",
         "--set", "tta=none", "--set", "val_map_images=2"]


@pytest.mark.slow
def test_folds_ensemble_tune_skip_and_predict_images(in_tmp, capsys):
    from kit.data.demo import make_dataset

    data = Path("data/demo")
    make_dataset(data, n_train=16, n_test=4, size=64)
    argv = ["folds", "--k", "2", "--preset", "tiny", "--data", str(data), "--name", "ens",
            *SHORT]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    ens = Path("runs/ens")
    assert (ens / "postprocess.json").is_file() and (ens / "raw_test.csv").is_file()
    assert json.loads((ens / "ensemble.json").read_text())["mode"] == "folds"
    folds = sorted(p for p in Path("runs").iterdir() if p.name.startswith("tiny-"))
    assert len(folds) == 2
    vals = [set(pd.read_csv(f / "val_ids.csv", dtype=str).patientId) for f in folds]
    assert not vals[0] & vals[1]
    assert set(pd.read_csv(ens / "val_ids.csv", dtype=str).patientId) == vals[0] | vals[1]
    assert str(ens / "postprocess.json") in out

    stamps = {f: (f / "raw_val.csv").stat().st_mtime_ns for f in folds}
    assert cli.main(argv) == 0                     # rerun: both folds found finished, skipped
    out = capsys.readouterr().out
    assert out.count(", skipped") == 2 and "fold 1/2: finished in" in out
    assert sorted(p for p in Path("runs").iterdir() if p.name.startswith("tiny-")) == folds
    assert {f: (f / "raw_val.csv").stat().st_mtime_ns for f in folds} == stamps

    # predict --images: a fold run (with the ensemble's postprocess.json) on a folder of DICOMs
    run = folds[0]
    shutil.copy(ens / "postprocess.json", run / "postprocess.json")
    films = Path("films")
    films.mkdir()
    tests = sorted((data / paths.TEST_IMAGES).glob("*.dcm"))[:2]
    for src in tests:
        shutil.copy(src, films / src.name)
    (films / "broken.dcm").write_bytes(tests[0].read_bytes()[:300])
    sub = Path("out/films.csv")
    assert cli.main(["predict", "--run", str(run), "--images", str(films), "--out", str(sub)]) == 0
    err = capsys.readouterr().err
    assert "broken.dcm" in err
    table = pd.read_csv(sub, keep_default_na=False)
    assert sorted(table.patientId) == sorted([s.stem for s in tests] + ["broken"])
    assert table.set_index("patientId").loc["broken", "PredictionString"] == ""
    raw = pd.read_csv(run / "raw_films.csv", dtype={"patientId": str})
    assert set(raw.patientId) <= {s.stem for s in tests}
    assert (run / "raw_films_images.csv").is_file()
