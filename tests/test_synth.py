import copy
import dataclasses

import numpy as np
import pytest

from kit import cli, paths
from kit.data import dicom
from kit.data import labels
from kit.data import demo as synth


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
    assert set(classes["class"]) == {"Lung Opacity", "Normal", "No Lung Opacity / Not Normal"}
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


SIZE = 128
COORDS = (np.arange(SIZE) + 0.5) * 1024 / SIZE          # pixel centres in the 1024 frame
XX, YY = np.meshgrid(COORDS, COORDS)


def _render_pair(case, rng, **changes):
    """(film of ``case``, film of ``case`` with ``changes``) from the same rng state, as int."""
    twin = copy.deepcopy(rng)
    return (synth.render(case, SIZE, rng).astype(int),
            synth.render(dataclasses.replace(case, **changes), SIZE, twin).astype(int))


def test_normal_films_clean_not_normal_films_carry_findings_near_the_lungs():
    seen = {"Normal": 0, "No Lung Opacity / Not Normal": 0}
    for i in range(40):
        rng = np.random.default_rng([5, i])
        case = synth.sample_case(rng, positive=False)
        film, clean = _render_pair(case, rng, findings=())
        seen[case.cls] += 1
        if case.cls == "Normal":
            assert case.findings == () and (film == clean).all()
            continue
        changed = abs(film - clean) >= 8                 # gray levels
        assert changed.sum() >= 30                       # of 128 x 128 px: a visible finding
        near = np.zeros_like(changed)                    # the lung fields' bounding box + 100 px
        near[(YY >= min(l.cy - l.ay for l in case.lungs) - 100)
             & (YY <= max(l.cy + l.ay for l in case.lungs) + 100)
             & (XX >= min(l.cx - l.ax for l in case.lungs) - 100)
             & (XX <= max(l.cx + l.ax for l in case.lungs) + 100)] = True
        assert (changed & near).sum() >= 0.5 * changed.sum()
    assert min(seen.values()) >= 10


def test_finding_kinds_all_occur_and_some_positives_carry_findings():
    kinds, positives_with = set(), 0
    for i in range(300):
        rng = np.random.default_rng([8, i])
        negative = synth.sample_case(rng, positive=False)
        assert (negative.cls == "Normal") == (negative.findings == ())
        kinds |= {f.kind for f in negative.findings}
        positives_with += bool(synth.sample_case(rng, positive=True).findings)
    assert kinds == set(synth.FINDING_KINDS)
    assert 0.1 * 300 < positives_with < 0.3 * 300     # POSITIVE_FINDING_FRACTION = 0.2


def test_opacity_contrast_spreads_from_faint_to_obvious_and_fills_its_box():
    gains = []
    for i in range(40):
        rng = np.random.default_rng([6, i])
        case = synth.sample_case(rng, positive=True)
        film, flat = _render_pair(case, rng, contrast=(0.0,) * len(case.contrast))
        opacity = film - flat                            # gray levels the opacities add
        in_box = np.zeros(opacity.shape, bool)
        for x, y, w, h in case.boxes:
            box = (XX >= x) & (XX < x + w) & (YY >= y) & (YY < y + h)
            in_box |= box
            core = (abs(XX - x - w / 2) < w / 4) & (abs(YY - y - h / 2) < h / 4)
            gains.append(opacity[core].mean())
            if len(case.boxes) == 1:                     # the blob reaches its box on every side
                rows, cols = np.nonzero(opacity >= 1)
                assert COORDS[cols].min() - x < 0.1 * w and x + w - COORDS[cols].max() < 0.1 * w
                assert COORDS[rows].min() - y < 0.1 * h and y + h - COORDS[rows].max() < 0.1 * h
        assert (opacity[~in_box] == 0).all()             # nothing outside the boxes
    gains = np.array(gains)
    assert gains.min() > 10                              # every opacity is there to learn
    assert 0.1 < (gains < 35).mean() < 0.4               # a minority is faint
    assert (gains > 50).mean() > 0.3                     # many are obvious
    assert gains.max() > 3 * gains.min()


def test_same_seed_same_findings_and_pixels():
    a, b = (synth.sample_case(np.random.default_rng([9, 2]), positive=False) for _ in range(2))
    assert a.cls == "No Lung Opacity / Not Normal" and a.findings and a.findings == b.findings
    film_a = synth.render(a, 64, np.random.default_rng(1))
    assert (film_a == synth.render(b, 64, np.random.default_rng(1))).all()


def test_cli_difficulty_rsna_and_back_to_easy(tmp_path, capsys):
    from kit.data import demo_rsna
    out = tmp_path / "demo"
    base = ["demo-data", "--out", str(out), "--n-train", "4", "--n-test", "2", "--size", "32"]
    assert cli.main(base + ["--difficulty", "rsna"]) == 0
    assert "rsna" in capsys.readouterr().out
    demo_rsna.make_dataset(tmp_path / "direct", n_train=4, n_test=2, size=32, seed=0)
    for name in (paths.TRAIN_LABELS, paths.CLASS_INFO, demo_rsna.TRUE_BOXES):   # the same set
        assert (out / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    assert cli.main(base + ["--force"]) == 0                                    # default: easy
    assert not (out / demo_rsna.TRUE_BOXES).exists()                            # no stale truth
    synth.make_dataset(tmp_path / "easy", n_train=4, n_test=2, size=32, seed=0)
    assert (out / paths.TRAIN_LABELS).read_bytes() == (tmp_path / "easy" / paths.TRAIN_LABELS).read_bytes()
    assert cli.main(base + ["--difficulty", "hard"]) == 2
