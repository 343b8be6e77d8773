"""kit.data.demo_rsna (``demo-data --difficulty rsna``) and its built-in statistics kit.data.demo_stats."""
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_bench

from kit import paths
from kit.data import demo_rsna, demo_stats, dicom, labels
from kit.score.metric import iou_matrix, score_dataset

REPO = Path(__file__).resolve().parent.parent


def bench():
    return load_bench("demo_rsna")


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    out = tmp_path_factory.mktemp("rsna")
    demo_rsna.make_dataset(out, n_train=40, n_test=20, size=64, seed=3)
    return out


def _ceiling(films) -> float:
    gt = {f.patient_id: f.boxes for f in films}
    preds = {f.patient_id: (np.ones(len(f.truth)), f.truth) for f in films if len(f.truth)}
    return score_dataset(gt, preds).map


def test_same_arguments_same_bytes(tmp_path):
    for name in ("a", "b"):
        demo_rsna.make_dataset(tmp_path / name, n_train=6, n_test=3, size=48, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6 + 3 + 5
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    demo_rsna.make_dataset(tmp_path / "c", n_train=6, n_test=3, size=48, seed=2)
    assert (tmp_path / "c" / paths.TRAIN_LABELS).read_text() \
        != (tmp_path / "a" / paths.TRAIN_LABELS).read_text()


def test_layout_and_csvs_pass_the_kits_label_validation(rsna):
    assert sorted(p.name for p in rsna.iterdir()) == sorted([
        paths.TRAIN_IMAGES, paths.TEST_IMAGES, paths.TRAIN_LABELS, paths.CLASS_INFO,
        paths.SAMPLE_SUBMISSION, paths.DEMO_TEST_LABELS, demo_rsna.TRUE_BOXES])
    train = labels.read_labels(rsna / paths.TRAIN_LABELS)
    test = labels.read_labels(rsna / paths.DEMO_TEST_LABELS)
    truth = labels.read_labels(rsna / demo_rsna.TRUE_BOXES)
    classes = labels.read_class_info(rsna / paths.CLASS_INFO)
    sample = labels.read_sample_submission(rsna / paths.SAMPLE_SUBMISSION)
    train_files = {p.stem for p in (rsna / paths.TRAIN_IMAGES).glob("*.dcm")}
    test_files = {p.stem for p in (rsna / paths.TEST_IMAGES).glob("*.dcm")}
    assert set(train["patientId"]) == train_files and len(train_files) == 40
    assert set(test["patientId"]) == set(sample["patientId"]) == test_files and len(test_files) == 20
    assert set(truth["patientId"]) == train_files | test_files
    assert list(classes["patientId"]) == list(train["patientId"])       # one class row per label row
    positive = dict(zip(train["patientId"], train["Target"]))
    assert all((c == "Lung Opacity") == bool(positive[p])
               for p, c in zip(classes["patientId"], classes["class"]))
    for df, n in ((train, 40), (test, 20)):                              # exactly 22.5 %, rounded
        assert df.groupby("patientId")["Target"].max().sum() == round(0.225 * n)
    table = pd.read_csv(rsna / demo_rsna.TRUE_BOXES, dtype={"patientId": str})
    assert set(table[table["split"] == "test"]["patientId"]) == test_files
    meta = dicom.read_metadata(rsna / paths.TEST_IMAGES / f"{next(iter(test_files))}.dcm")
    assert (meta["Rows"], meta["Columns"]) == (64, 64)
    assert meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"


def test_files_hold_the_sampled_films_and_the_ceiling_recomputes_from_them(rsna):
    _, films = demo_rsna.sample_split(3, 1, 20)
    gt = labels.boxes_by_patient(labels.read_labels(rsna / paths.DEMO_TEST_LABELS))
    truth = labels.boxes_by_patient(labels.read_labels(rsna / demo_rsna.TRUE_BOXES))
    for f in films:
        assert np.array_equal(gt[f.patient_id], f.boxes) and np.array_equal(truth[f.patient_id], f.truth)
    assert bench().ceiling(rsna)[0] == pytest.approx(_ceiling(films))


def test_splits_allocate_counts_and_classes_exactly():
    _, films = demo_rsna.sample_split(0, 0, 1000)
    counts = np.array([len(f.boxes) for f in films])
    assert (counts > 0).sum() == 225
    assert [int((counts == k).sum()) for k in (1, 2, 3, 4)] == [98, 122, 4, 1]    # 225 x 43.5/54.3/2.0/0.2 %
    classes = pd.Series([f.cls for f in films]).value_counts()
    assert classes.to_dict() == {"No Lung Opacity / Not Normal": 443, "Normal": 332, "Lung Opacity": 225}
    negatives = [f for f in films if not len(f.boxes)]
    assert all((f.cls == "Normal") == (not f.findings) for f in negatives)   # "Not Normal": findings


def test_builtin_box_statistics_give_the_real_quantiles():
    """The issue's real 5/25/50/75/95 % quantiles (1024 frame) and 53.5 % left, without the CSVs."""
    boxes = bench().model_boxes(6000, seed=1)
    real = {0: (124, 177, 217, 259, 317), 1: (121, 203, 298, 438, 623),
            2: (240, 314, 415, 709, 787), 3: (342, 455, 531, 609, 720)}
    for i, expected in real.items():
        got = np.percentile(boxes[:, i], [5, 25, 50, 75, 95])
        assert np.abs(got - expected).max() < 0.04 * 1024 * (0.5 if i < 2 else 1), (i, got)
    assert abs((boxes[:, 2] < 512).mean() - 0.535) < 0.015
    for boxes_one in (demo_stats.sample_boxes(np.random.default_rng(i), 2) for i in range(300)):
        assert iou_matrix(boxes_one, boxes_one)[0, 1] == 0       # boxes of one image never overlap
        assert (boxes_one[:, :2] >= 0).all() and (boxes_one[:, :2] + boxes_one[:, 2:] <= 1024).all()


def test_label_statistics_against_the_real_labels(real_rsna):
    b = bench()
    df = labels.read_labels(real_rsna / paths.TRAIN_LABELS)
    per_image = df.groupby("patientId")["Target"].sum()
    assert abs((per_image > 0).mean() - demo_stats.POSITIVE_FRACTION) < 0.001
    share = per_image[per_image > 0].value_counts(normalize=True)
    assert all(abs(share[k] - p) < 1e-9 for k, p in demo_stats.BOX_COUNT_P.items())
    classes = labels.read_class_info(real_rsna / paths.CLASS_INFO).drop_duplicates()
    negatives = classes[classes["class"] != "Lung Opacity"]["class"].value_counts(normalize=True)
    assert all(abs(negatives[k] - p) < 1e-9 for k, p in demo_stats.NEGATIVE_CLASSES.items())
    built_in = {k: v.astype(int).tolist() for k, v in demo_stats.QUANTILES.items()}
    assert b.fit(real_rsna)["quantiles"] == built_in
    real = b.real_boxes(real_rsna)
    ks = b.ks_table(b.model_boxes(20000), real)
    assert max(ks.values()) < 0.025, ks
    assert abs((b.model_boxes(20000)[:, 2] < 512).mean() - (real[:, 2] < 512).mean()) < 0.01


def test_reader_ceiling_on_a_small_set():
    """The competition mAP of the true boxes (score 1) against the reader's labels."""
    _, films = demo_rsna.sample_split(7, 1, 1500)
    assert 0.45 < _ceiling(films) < 0.65


def test_reader_model_boxes_merges_and_misses():
    rng = np.random.default_rng(0)
    ious, merged, faint = [], 0, []
    for _ in range(2000):
        label = demo_stats.sample_boxes(rng, 1)
        truth, contrast, labelled = demo_rsna.true_opacities(rng, label, missed=False)
        assert all(labelled) and len(truth) in (1, 2)
        if len(truth) == 2:                                     # two adjacent opacities, one box
            merged += 1
            assert iou_matrix(truth[:1], truth[1:])[0, 0] < 0.2
        else:
            ious.append(iou_matrix(truth, label)[0, 0])
        faint += [c < demo_rsna.NEAR_NOISE_PEAK[1] for c in contrast]
        assert (truth[:, 2:] > 0).all() and (truth[:, :2] + truth[:, 2:] <= 1024).all()
    ious = np.array(ious)
    assert 0.6 < np.median(ious) < 0.8 and (ious >= 0.4).mean() > 0.95     # the same opacity,
    assert 0.1 < (ious < 0.6).mean() < 0.3 and (ious < 0.75).mean() > 0.5   # but readers differ
    assert 0.06 < merged / 2000 < 0.16
    assert 0.06 < np.mean(faint) < 0.14                                     # about 1 in 10 near the noise
    _, _, labelled = demo_rsna.true_opacities(rng, np.zeros((0, 4)), missed=True)
    assert labelled == (False,)
    _, films = demo_rsna.sample_split(2, 0, 2000)
    missed = [c for f in films for c, lab in zip(f.contrast, f.labelled) if not lab]
    assert 0.04 * 2000 < len(missed) < 0.12 * 2000 and max(missed) <= demo_rsna.MISSED_PEAK[1]


SIZE = 128
COORDS = (np.arange(SIZE) + 0.5) * 1024 / SIZE
XX, YY = np.meshgrid(COORDS, COORDS)


def _positive_films(seed, n):
    rngs, films = demo_rsna.sample_split(seed, 0, 12 * n)
    return [(r, f) for r, f in zip(rngs, films) if len(f.truth) and all(f.labelled)][:n]


def test_opacities_are_diffuse_textured_and_stay_in_their_box():
    for rng, film in _positive_films(4, 6):
        twin = copy.deepcopy(rng)
        with_ = demo_rsna.render(film, SIZE, rng).astype(int)
        flat = dataclasses.replace(film, contrast=(0.0,) * len(film.truth))
        without = demo_rsna.render(flat, SIZE, twin).astype(int)
        added = with_ - without
        inside = np.zeros(added.shape, bool)
        for x, y, w, h in film.truth:
            inside |= ((XX - x - w / 2) / (w / 2)) ** 2 + ((YY - y - h / 2) / (h / 2)) ** 2 < 1
        assert (np.abs(added[~inside]) <= 1).mean() > 0.99                   # nothing outside
        x, y, w, h = film.truth[int(np.argmax(film.contrast))]
        if max(film.contrast) < 30:
            continue
        r = np.sqrt(((XX - x - w / 2) / (w / 2)) ** 2 + ((YY - y - h / 2) / (h / 2)) ** 2)
        core, rim = added[r < 0.35], added[(r > 0.7) & (r < 0.9)]
        assert core.mean() > 1.5 * max(rim.mean(), 1)                       # soft margin: fades out
        assert core.std() > 0.05 * core.mean()                              # internal texture (flat: ~0)


def test_films_vary_in_pose_exposure_collimation_and_markers():
    rngs, films = demo_rsna.sample_split(5, 0, 40)
    imgs = [demo_rsna.render(f, SIZE, r) for r, f in zip(rngs, films)]
    means = [im.mean() for im in imgs]
    assert max(means) - min(means) > 20                                     # per-film exposure
    angles = [abs(f.pose[3]) for f in films]
    assert max(angles) > np.radians(2)                                      # rotated patients
    bright_top = [(im[:SIZE // 5] >= 200).sum() > 3 for im in imgs]         # markers / collimation
    assert 0.3 < np.mean(bright_top) <= 1
    grid = 64
    c = (np.arange(grid) + 0.5) * 1024 / grid
    xx, yy = np.meshgrid(c, c)
    over_heart = below = n = 0
    _, films = demo_rsna.sample_split(6, 0, 600)
    for f in (f for f in films if len(f.truth)):
        fields = demo_rsna.fields(f, *demo_rsna._to_patient(f.pose, xx, yy))
        for x, y, w, h in f.truth:
            box = (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
            n += 1
            over_heart += fields["heart"][box].mean() > 0.2
            below += fields["below"][box].mean() > 0.2
    assert over_heart / n > 0.1 and below / n > 0.01                        # some overlap heart or dome
