import numpy as np
import pandas as pd
import pytest

from kit import cli, paths
from kit.data import labels
from kit.data import split
from kit.errors import KitError


def make_labels(counts: dict[int, int]) -> pd.DataFrame:
    """A labels table with counts[k] images of k boxes (ids p<k>-<i>)."""
    rows = []
    for k, n in counts.items():
        for i in range(n):
            pid = f"p{k}-{i}"
            rows += [(pid, np.nan, np.nan, np.nan, np.nan, 0)] if k == 0 else \
                [(pid, 10.0, 10.0, 100.0, 100.0, 1)] * k
    return pd.DataFrame(rows, columns=labels.LABEL_COLUMNS)


def test_disjoint_complete_and_stratified():
    df = make_labels({0: 700, 1: 130, 2: 160, 3: 7, 4: 3})
    train, val = split.split_patients(df, n_val=100, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val) and set(train) | set(val) == set(df["patientId"])
    strata = split.strata_of(df)
    for stratum, total in zip(split.STRATA, (700, 130, 160, 10)):
        got = int(strata[val].eq(stratum).sum())
        assert abs(got - 100 * total / 1000) <= 1, stratum
    assert train == [p for p in dict.fromkeys(df["patientId"]) if p not in set(val)]  # file order


def test_small_data_uses_20_percent():
    df = make_labels({0: 30, 1: 10})
    train, val = split.split_patients(df, n_val=1500)
    assert len(val) == 8 and len(train) == 32
    assert sum(p.startswith("p1") for p in val) == 2


def test_seeded_and_deterministic():
    df = make_labels({0: 300, 1: 50, 2: 50})
    assert split.split_patients(df, 80, seed=1) == split.split_patients(df, 80, seed=1)
    assert split.split_patients(df, 80, seed=1)[1] != split.split_patients(df, 80, seed=2)[1]


def test_cli_writes_csv_and_refuses_a_different_rerun(tmp_path, capsys):
    make_labels({0: 40, 1: 10}).to_csv(tmp_path / paths.TRAIN_LABELS, index=False)
    out = tmp_path / "split.csv"
    args = ["split", "--data", str(tmp_path), "--out", str(out)]
    assert cli.main(args) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["patientId", "split"] and (table["split"] == "val").sum() == 10
    assert split.read_split(out) == split.split_patients(labels.read_labels(tmp_path / paths.TRAIN_LABELS))
    assert cli.main(args) == 0                                         # same split: fine
    before = out.read_bytes()
    assert cli.main(args + ["--seed", "9"]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(args + ["--seed", "9", "--force"]) == 0 and out.read_bytes() != before


def test_default_out_is_under_data_cache(in_tmp):
    data = in_tmp / "mydata"
    data.mkdir()
    make_labels({0: 8, 2: 2}).to_csv(data / paths.TRAIN_LABELS, index=False)
    assert cli.main(["split", "--data", str(data)]) == 0
    assert (in_tmp / "data" / "cache" / "mydata-split.csv").is_file()


def test_real_labels_1500_val(real_rsna):
    df = labels.read_labels(real_rsna / paths.TRAIN_LABELS)
    train, val = split.split_patients(df)
    assert len(val) == 1500 and len(train) == 26684 - 1500 and not set(train) & set(val)
    strata = split.strata_of(df)
    for stratum in split.STRATA:
        exact = 1500 * strata.eq(stratum).sum() / len(strata)
        assert abs(strata[val].eq(stratum).sum() - exact) <= 1


# ---- folds ---------------------------------------------------------------------------------
def check_folds(df: pd.DataFrame, k: int, seed: int) -> list[list[str]]:
    """Assert the K folds are disjoint, cover every patient once and are stratified; val sets."""
    order = list(dict.fromkeys(df["patientId"]))
    strata = split.strata_of(df)
    vals = []
    for fold in range(k):
        train, val = split.fold_split(df, k, fold, seed)
        assert not set(train) & set(val) and sorted(train + val) == sorted(order)
        in_val = set(val)
        assert val == [p for p in order if p in in_val]                  # label-file order
        for stratum in split.STRATA:
            got = int(strata[val].eq(stratum).sum())
            total = int(strata.eq(stratum).sum())
            assert total // k <= got <= -(-total // k), (fold, stratum)
        vals.append(val)
    assert sorted(p for v in vals for p in v) == sorted(order)      # each image exactly once
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    return vals


def test_folds_disjoint_cover_once_and_stratified():
    df = make_labels({0: 70, 1: 13, 2: 16, 3: 2, 4: 1})
    vals = check_folds(df, 5, seed=0)
    assert [len(v) for v in vals] == [21, 21, 20, 20, 20]
    fold = split.fold_of(df, 5, seed=0)
    assert list(fold.index) == list(dict.fromkeys(df["patientId"]))
    assert all(fold[p] == i for i, v in enumerate(vals) for p in v)


def test_folds_keep_every_row_of_a_patient_together():
    df = make_labels({0: 10, 2: 6, 3: 4})        # 2- and 3-box patients have several rows
    vals = check_folds(df, 3, seed=4)
    for val in vals:
        rows = df[df["patientId"].isin(val)]
        assert rows.groupby("patientId").size().sum() == len(rows)
        assert set(rows["patientId"]) == set(val)


def test_folds_seeded_and_deterministic():
    df = make_labels({0: 60, 1: 20, 2: 20})
    assert split.fold_split(df, 4, 1, seed=3) == split.fold_split(df, 4, 1, seed=3)
    assert split.fold_split(df, 4, 1, seed=3)[1] != split.fold_split(df, 4, 1, seed=5)[1]
    assert split.fold_split(df, 4, 1, seed=3)[1] != split.fold_split(df, 4, 2, seed=3)[1]


def test_fold_arguments_are_checked():
    df = make_labels({0: 3, 1: 1})
    for folds, fold, match in [(1, 0, "folds must"), (5, 0, "at least 5 images"),
                               (2, 2, "fold must"), (2, -1, "fold must")]:
        with pytest.raises(KitError, match=match):
            split.fold_split(df, folds, fold)


def test_real_labels_5_folds(real_rsna):
    df = labels.read_labels(real_rsna / paths.TRAIN_LABELS)
    vals = check_folds(df, 5, seed=0)
    assert sorted(len(v) for v in vals) == [5336, 5337, 5337, 5337, 5337]
    strata = split.strata_of(df)
    rate = (strata != "0").mean()
    for val in vals:
        assert abs((strata[val] != "0").mean() - rate) < 0.001        # positive rate per fold


def test_train_split_uses_the_split_csv(in_tmp, monkeypatch):
    """`train --split CSV` reaches the trainer, whose run split is the CSV's train/val images
    (train_ids.csv, val_ids.csv), checked against the labels before any run folder exists."""
    import dataclasses

    from kit.config import get_preset
    from kit.data.demo import make_dataset
    from kit.train import trainer

    data = in_tmp / "data" / "demo"
    make_dataset(data, n_train=12, n_test=2, size=64, seed=8)
    out = in_tmp / "split.csv"
    assert cli.main(["split", "--data", str(data), "--out", str(out), "--seed", "5"]) == 0
    want_train, want_val = split.read_split(out)
    cfg = dataclasses.replace(get_preset("tiny"), data_dir=str(data))
    ids = split.read_split_file(out, data, cfg.folds)
    assert ids == (want_train, want_val)
    run = in_tmp / "runs" / "r"
    run.mkdir(parents=True)
    *_, train_ids, val_ids = trainer.load_run_data(cfg, run, ids)
    assert (train_ids, val_ids) == (want_train, want_val)
    assert pd.read_csv(run / "val_ids.csv", dtype=str).patientId.tolist() == want_val
    assert (train_ids, val_ids) != tuple(split.split_patients(
        labels.read_labels(data / paths.TRAIN_LABELS), cfg.n_val, cfg.split_seed))

    seen = {}
    import kit.flow.train as flow_train

    monkeypatch.setattr(flow_train, "train", lambda **kw: seen.update(kw) or run)
    assert cli.main(["train", "--preset", "tiny", "--data", str(data), "--split", str(out)]) == 0
    assert seen["split"] == out

    bad = in_tmp / "bad.csv"
    pd.DataFrame({"patientId": ["nobody", want_val[0]], "split": ["train", "val"]}).to_csv(bad, index=False)
    with pytest.raises(KitError, match="not in .* labels"):
        split.read_split_file(bad, data, cfg.folds)
    with pytest.raises(KitError, match="folds"):
        split.read_split_file(out, data, 2)
    monkeypatch.undo()
    monkeypatch.chdir(in_tmp)
    assert cli.main(["train", "--preset", "tiny", "--data", str(data), "--split", str(bad),
                     "--runs-dir", "fresh"]) == 2
    assert not (in_tmp / "fresh").exists()        # refused before a run folder was made
