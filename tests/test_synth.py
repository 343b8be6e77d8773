import numpy as np
import pytest

from kit import cli, dicom, labels, paths, synth


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    synth.make_dataset(out, n_train=40, n_test=10, size=64, seed=3)
    return out


def test_kaggle_layout_and_formats_pass_validation(demo):
    assert sorted(p.name for p in demo.iterdir()) == sorted([
        paths.TRAIN_IMAGES, paths.TEST_IMAGES, paths.TRAIN_LABELS, paths.CLASS_INFO,
        paths.SAMPLE_SUBMISSION, paths.DEMO_TEST_LABELS])
    train = labels.read_labels(demo / paths.TRAIN_LABELS)
    test = labels.read_labels(demo / paths.DEMO_TEST_LABELS)
    classes = labels.read_class_info(demo / paths.CLASS_INFO)
    sample = labels.read_sample_submission(demo / paths.SAMPLE_SUBMISSION)
    train_files = {p.stem for p in (demo / paths.TRAIN_IMAGES).glob("*.dcm")}
    test_files = {p.stem for p in (demo / paths.TEST_IMAGES).glob("*.dcm")}
    assert set(train["patientId"]) == train_files and len(train_files) == 40
    assert set(test["patientId"]) == set(sample["patientId"]) == test_files and len(test_files) == 10
    assert list(classes["patientId"]) == list(train["patientId"])       # one class row per label row
    positive = dict(zip(train["patientId"], train["Target"]))
    assert all((c == "Lung Opacity") == bool(positive[p]) for p, c in zip(classes["patientId"], classes["class"]))
    assert set(sample["PredictionString"]) == {"0.5 0 0 100 100"}
    row = next(line for line in (demo / paths.TRAIN_LABELS).read_text().splitlines() if line.endswith(",1"))
    assert row.split(",")[1].endswith(".0")                            # written like 264.0
    assert "," * 5 + "0" in (demo / paths.TRAIN_LABELS).read_text()     # empty fields on negatives
    pid = next(iter(train_files))
    meta = dicom.read_metadata(demo / paths.TRAIN_IMAGES / f"{pid}.dcm")
    assert (meta["Rows"], meta["Columns"], meta["patientId"]) == (64, 64, pid)
    assert meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"
    assert len(pid) == 36 and pid[14] == "4"                           # uuid4 shaped


def test_positive_fraction_and_box_sizes(demo):
    train = labels.read_labels(demo / paths.TRAIN_LABELS)
    boxes = labels.boxes_by_patient(train)
    assert sum(len(b) > 0 for b in boxes.values()) == round(synth.POSITIVE_FRACTION * 40)
    all_boxes = np.concatenate([b for b in boxes.values() if len(b)])
    assert (all_boxes[:, 2:] >= 150).all() and (all_boxes[:, 2:] <= 350).all()
    assert (all_boxes[:, :2] + all_boxes[:, 2:] <= 1024).all()


def test_same_seed_same_bytes(tmp_path):
    for name in ("a", "b"):
        synth.make_dataset(tmp_path / name, n_train=6, n_test=2, size=48, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6 + 2 + 4
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    synth.make_dataset(tmp_path / "c", n_train=6, n_test=2, size=48, seed=2)
    assert (tmp_path / "c" / paths.TRAIN_LABELS).read_text() != (tmp_path / "a" / paths.TRAIN_LABELS).read_text()


def test_blob_brighter_than_the_lung_around_it():
    size = 128
    for i in range(8):
        rng = np.random.default_rng([7, i])
        case = synth.sample_case(rng, positive=True)
        img = synth.render(case, size, rng).astype(float)
        coords = (np.arange(size) + 0.5) * 1024 / size
        xx, yy = np.meshgrid(coords, coords)
        in_box = np.zeros((size, size), bool)
        for x, y, w, h in case.boxes:
            in_box |= (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
        for x, y, w, h in case.boxes:
            core = (abs(xx - x - w / 2) < w / 4) & (abs(yy - y - h / 2) < h / 4)
            lung = next(l for l in case.lungs if abs(l.cx - (x + w / 2)) < l.ax)
            around = ((xx - lung.cx) / lung.ax) ** 2 + ((yy - lung.cy) / lung.ay) ** 2 < 0.8
            around &= ~in_box & (yy < 600)            # above the heart
            assert img[core].mean() > img[around].mean() + 20   # gray levels


def test_cli_refuses_non_empty_folder_unless_force(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["demo-data", "--out", str(out), "--n-train", "3", "--n-test", "1", "--size", "32"]
    assert cli.main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert cli.main(args + ["--force"]) == 0
    assert cli.main(args + ["--force", "--seed", "5"]) == 0
    assert len(list((out / paths.TRAIN_IMAGES).iterdir())) == 3        # old images replaced, not mixed
    assert (out / "keep.txt").read_text() == "mine"
