import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image

from kit import cli, paths
from kit.data import prepare as cache
from kit.data import dicom
from kit.data import labels
from kit.data import demo as synth
from kit.errors import KitError


@pytest.fixture(scope="module")
def demo_src(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    synth.make_dataset(out, n_train=10, n_test=4, size=64, seed=0)
    return out


@pytest.fixture
def demo(demo_src, tmp_path):
    """A private copy (tests damage files)."""
    return shutil.copytree(demo_src, tmp_path / "demo")


@pytest.fixture
def count_decodes(monkeypatch):
    """Patient ids decoded by in-process (workers=1) prepare calls."""
    calls: list[str] = []
    real = dicom.read_image

    def counting(path, size):
        calls.append(path.stem)
        return real(path, size)

    monkeypatch.setattr(cache.dicom, "read_image", counting)
    return calls


def test_prepare_shapes_scale_and_metadata(demo, tmp_path):
    c = cache.prepare(demo, 32, out=tmp_path / "c", workers=1)
    assert c.size == 32 and list(c.meta.columns) == cache.META_COLUMNS
    train_ids = list(dict.fromkeys(labels.read_labels(demo / paths.TRAIN_LABELS)["patientId"]))
    assert c.ids("train") == train_ids and len(c.ids("test")) == 4
    assert (c.meta["scale"] == 0.5).all() and (c.meta["orig_height"] == 64).all()
    pid = train_ids[0]
    row = c.meta.set_index("patientId").loc[pid]
    header = dicom.read_metadata(demo / paths.TRAIN_IMAGES / f"{pid}.dcm")
    assert (row["PatientAge"], row["PatientSex"], row["ViewPosition"]) == \
        (header["PatientAge"], header["PatientSex"], header["ViewPosition"])
    img = c.load(pid)
    assert img.dtype == np.uint8 and img.shape == (32, 32)
    full = Image.fromarray(dicom.read_pixels(demo / paths.TRAIN_IMAGES / f"{pid}.dcm"))
    ref = np.asarray(full.resize((32, 32), Image.BOX)).astype(int)
    assert np.abs(img.astype(int) - ref).mean() < 3
    with pytest.raises(KitError, match="not in the cache"):
        c.load("nobody")


def test_upsampling_and_reopening(demo, tmp_path):
    cache.prepare(demo, 96, out=tmp_path / "c", workers=1, splits=("test",))
    c = cache.Cache(tmp_path / "c")
    assert (c.meta["scale"] == 1.5).all() and c.load(c.ids("test")[0]).shape == (96, 96)
    with pytest.raises(KitError, match="--split train"):
        c.ids("train")
    with pytest.raises(KitError, match="not 32"):
        cache.prepare(demo, 32, out=tmp_path / "c", workers=1)


def test_resume_skips_finished_images(demo, tmp_path, count_decodes):
    out = tmp_path / "c"
    cache.prepare(demo, 32, out=out, workers=1)
    assert len(count_decodes) == 14
    count_decodes.clear()
    c = cache.prepare(demo, 32, out=out, workers=1)
    assert count_decodes == []
    victim = c.ids("train")[3]
    (out / "train" / f"{victim}.npy").unlink()
    (out / "meta.csv").unlink()                                 # headers are re-read, not decoded
    (out / "train" / ".half.npy.tmp").write_bytes(b"junk")      # left by a killed run
    c = cache.prepare(demo, 32, out=out, workers=1)
    assert count_decodes == [victim] and len(c.ids("train")) == 10
    assert not list(out.glob("*/.*.tmp"))


def test_interrupt_keeps_finished_images_and_rerun_completes(demo, tmp_path, monkeypatch):
    real = dicom.read_image
    seen = []

    def interrupted(path, size):
        seen.append(path)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache.dicom, "read_image", interrupted)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        cache.prepare(demo, 32, out=out, workers=1)
    partial = cache.Cache(out)
    assert len(partial.meta) == 2 and partial.info["splits"] == {}
    assert len(list(out.glob("train/*.npy"))) == 2
    monkeypatch.setattr(cache.dicom, "read_image", real)
    c = cache.prepare(demo, 32, out=out, workers=1)
    assert len(c.ids("train")) == 10 and len(c.ids("test")) == 4


def test_corrupt_test_image_exits_2_and_names_it(demo, tmp_path, capsys):
    test_ids = labels.read_sample_submission(demo / paths.SAMPLE_SUBMISSION)["patientId"]
    bad = demo / paths.TEST_IMAGES / f"{test_ids[1]}.dcm"
    bad.write_bytes(bad.read_bytes()[:300])
    out = tmp_path / "c"
    code = cli.main(["prepare", "--data", str(demo), "--size", "32", "--out", str(out), "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.strip().splitlines()[-1].startswith("error: ")
    c = cache.Cache(out)
    assert len(c.ids("train")) == 10
    with pytest.raises(KitError, match="not prepared"):
        c.ids("test")
    assert len(list(out.glob("test/*.npy"))) == 3                  # the readable ones are kept


def test_corrupt_train_image_is_skipped_with_a_warning(demo, tmp_path, capsys):
    train_ids = list(dict.fromkeys(labels.read_labels(demo / paths.TRAIN_LABELS)["patientId"]))
    bad = demo / paths.TRAIN_IMAGES / f"{train_ids[2]}.dcm"
    bad.write_bytes(b"not a dicom")
    (demo / paths.TRAIN_IMAGES / f"{train_ids[5]}.dcm").unlink()
    out = tmp_path / "c"
    assert cli.main(["prepare", "--data", str(demo), "--size", "32", "--out", str(out),
                     "--split", "train", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {bad}" in err and f"{train_ids[5]}.dcm" in err
    c = cache.Cache(out)
    assert c.ids("train") == [p for i, p in enumerate(train_ids) if i not in (2, 5)]
    assert len(c.info["splits"]["train"]["skipped"]) == 2


@pytest.mark.parametrize("tensorflow_loaded", [False, True])   # fork, else spawn
def test_worker_processes_give_the_same_images(demo, tmp_path, monkeypatch, tensorflow_loaded):
    if tensorflow_loaded:
        monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    one = cache.prepare(demo, 32, out=tmp_path / "one", workers=1, splits=("test",))
    two = cache.prepare(demo, 32, out=tmp_path / "two", workers=2, splits=("test",))
    assert one.meta.equals(two.meta)
    for pid in one.ids("test"):
        np.testing.assert_array_equal(one.load(pid), two.load(pid))


def test_default_cache_dir(demo, in_tmp):
    assert cli.main(["prepare", "--data", str(demo), "--size", "16", "--split", "test",
                     "--workers", "1"]) == 0
    assert (in_tmp / "data" / "cache" / "demo-16" / "meta.csv").is_file()
