import shutil
import sys
import types
from pathlib import Path

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


def test_corrupt_test_image_is_skipped_loudly_and_the_rest_prepared(demo, tmp_path, capsys):
    test_ids = labels.read_sample_submission(demo / paths.SAMPLE_SUBMISSION)["patientId"]
    bad = demo / paths.TEST_IMAGES / f"{test_ids[1]}.dcm"
    bad.write_bytes(bad.read_bytes()[:300])
    out = tmp_path / "c"
    argv = ["prepare", "--data", str(demo), "--size", "32", "--out", str(out), "--workers", "1"]
    for _ in range(2):                                            # a rerun does the same
        assert cli.main(argv) == 0
        err = capsys.readouterr().err
        assert f"error: skipped test image {bad}" in err
        assert err.strip().splitlines()[-1].startswith("error: 1 test image(s) unreadable")
        c = cache.Cache(out)
        assert len(c.ids("train")) == 10 and c.ids("test") == [p for p in test_ids if p != test_ids[1]]
        assert c.info["splits"]["test"]["skipped"][0].startswith(str(bad))


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


def _damage(demo):
    """Damage four train files of ``demo`` in four ways; returns {patientId: words of its line}."""
    import pydicom

    train_ids = list(dict.fromkeys(labels.read_labels(demo / paths.TRAIN_LABELS)["patientId"]))
    folder = demo / paths.TRAIN_IMAGES
    ds = pydicom.dcmread(folder / f"{train_ids[1]}.dcm")
    ds.Rows = None                                       # metadata_of once raised TypeError here
    ds.save_as(folder / f"{train_ids[1]}.dcm")
    (folder / f"{train_ids[3]}.dcm").write_bytes(b"")
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" /
                "DICOMDIR", folder / f"{train_ids[6]}.dcm")
    ds = pydicom.dcmread(folder / f"{train_ids[8]}.dcm")
    ds.NumberOfFrames = 2
    ds.save_as(folder / f"{train_ids[8]}.dcm")
    return {train_ids[1]: "field 'Rows'", train_ids[3]: "empty file",
            train_ids[6]: "DICOMDIR", train_ids[8]: "multi-frame"}, train_ids


@pytest.mark.parametrize("workers", [1, 2])
def test_damaged_files_among_many_are_skipped_and_a_rerun_survives(demo, tmp_path, capsys,
                                                                   workers):
    damaged, train_ids = _damage(demo)
    out = tmp_path / "c"
    for _ in range(2):
        c = cache.prepare(demo, 32, out=out, workers=workers, splits=("train",))
        assert c.ids("train") == [p for p in train_ids if p not in damaged]
        err = capsys.readouterr().err
        skipped = [line for line in err.splitlines() if line.startswith("warning: skipped")]
        assert len(skipped) == 4 and len(c.info["splits"]["train"]["skipped"]) == 4
        for pid, words in damaged.items():
            assert any(f"{pid}.dcm" in line and words in line for line in skipped), (pid, err)


def test_any_exception_while_reading_skips_only_that_file(demo, tmp_path, capsys, monkeypatch):
    real = dicom.read_image
    victim = list(dict.fromkeys(labels.read_labels(demo / paths.TRAIN_LABELS)["patientId"]))[4]

    def flaky(path, size):
        if path.stem == victim:
            raise TypeError("int() argument must be a string\nnot 'NoneType'")
        return real(path, size)

    monkeypatch.setattr(cache.dicom, "read_image", flaky)
    c = cache.prepare(demo, 32, out=tmp_path / "c", workers=1)
    assert victim not in c.ids("train") and len(c.ids("train")) == 9 and len(c.ids("test")) == 4
    line = [x for x in capsys.readouterr().err.splitlines() if victim in x]
    assert line == [f"warning: skipped {demo / paths.TRAIN_IMAGES / victim}.dcm: unreadable "
                    "(TypeError: int() argument must be a string; not 'NoneType')"]


def test_a_finished_image_whose_file_broke_is_decoded_again_and_reported(demo, tmp_path, capsys):
    out = tmp_path / "c"
    c = cache.prepare(demo, 32, out=out, workers=1, splits=("train",))
    pid = c.ids("train")[2]
    (demo / paths.TRAIN_IMAGES / f"{pid}.dcm").write_bytes(b"")
    (out / "meta.csv").unlink()                                   # headers are re-read
    c = cache.prepare(demo, 32, out=out, workers=1, splits=("train",))
    assert pid not in c.ids("train") and not (out / "train" / f"{pid}.npy").exists()
    assert f"{pid}.dcm: empty file" in capsys.readouterr().err


def test_conversions_are_one_warning_line_each_per_prepare(demo, tmp_path, capsys):
    import pydicom

    train_ids = list(dict.fromkeys(labels.read_labels(demo / paths.TRAIN_LABELS)["patientId"]))
    for pid in train_ids[:3]:                                     # colour films
        path = demo / paths.TRAIN_IMAGES / f"{pid}.dcm"
        gray = dicom.read_pixels(path)
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.set_pixel_data(np.repeat(gray[..., None], 3, axis=-1), "RGB", 8)
        ds.save_as(path)
    c = cache.prepare(demo, 32, out=tmp_path / "c", workers=1, splits=("train",))
    assert len(c.ids("train")) == 10
    warned = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warned) == 1 and "not grayscale" in warned[0]
    assert warned[0].endswith("(and 2 more image(s) like it)")


def test_predict_with_a_damaged_test_image_keeps_the_submission_valid(demo, in_tmp, capsys):
    """Every readable test image gets its row; the damaged one is named, and the submission
    gives it an empty PredictionString."""
    from kit.config import get_preset
    from kit.infer.predict import predict
    from kit.score.postprocess import PostProcess
    from kit.score.submission import read_submission, validate_submission

    class Model:
        class config:
            BATCH_SIZE = 2

        def detect(self, images, masks=False):
            return [{"rois": np.array([[4.0, 4.0, 20.0, 20.0]]), "scores": np.array([0.9])}
                    for _ in images]

    test_ids = labels.read_sample_submission(demo / paths.SAMPLE_SUBMISSION)["patientId"].tolist()
    bad = demo / paths.TEST_IMAGES / f"{test_ids[2]}.dcm"
    bad.write_bytes(b"")
    run = in_tmp / "runs" / "r"
    run.mkdir(parents=True)
    cfg = get_preset("tiny", [f"data_dir={demo}", "tta=none"])
    cfg.save(run / "config.json")
    PostProcess(0.5, 0.5, 1.0, 3).to_json(run / "postprocess.json")
    raw = predict(run, "test", model=Model())
    err = capsys.readouterr().err
    assert "error: predict test: 1 test image(s) unreadable" in err and str(bad) in err
    assert sorted(set(cache.pd.read_csv(raw)["patientId"])) == sorted(set(test_ids) - {test_ids[2]})
    sub = in_tmp / "sub.csv"
    assert cli.main(["submit", "--run", str(run), "--out", str(sub)]) == 0
    assert validate_submission(sub, demo / paths.SAMPLE_SUBMISSION) == []
    rows = read_submission(sub)
    assert len(rows) == 4 and len(rows[test_ids[2]][0]) == 0 and len(rows[test_ids[0]][0]) == 1


def test_a_split_with_no_readable_image_stops_prepare(demo, tmp_path):
    for dcm in (demo / paths.TEST_IMAGES).glob("*.dcm"):
        dcm.write_bytes(b"not a dicom")
    with pytest.raises(KitError, match="all 4 test image"):
        cache.prepare(demo, 32, out=tmp_path / "c", workers=1)
    c = cache.Cache(tmp_path / "c")
    assert len(c.ids("train")) == 10
    with pytest.raises(KitError, match="not prepared"):
        c.ids("test")
