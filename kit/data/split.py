"""Patient-level train/val split, stratified on boxes per image (0, 1, 2, 3+); command ``split``.

``python -m kit split --data DIR`` writes ``data/cache/<DIR name>-split.csv`` (patientId,split with
split in {train, val}), next to the prepared-image caches of the same data; ``train --split CSV``
trains on it instead of drawing its own seeded split. A rerun that would
write a different split refuses unless --force. :func:`fold_split` gives K-fold splits
(``RunConfig.folds``/``fold``): the same strata, patient-level, seeded.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import read_csv, write_csv
from kit.data.labels import read_labels
from kit.paths import default_data_dir

STRATA = ("0", "1", "2", "3+")


def strata_of(labels_df: pd.DataFrame) -> pd.Series:
    """Stratum label per patientId (labels order): boxes per image as 0, 1, 2 or 3+."""
    boxes = labels_df.groupby("patientId", sort=False)["Target"].sum()
    return boxes.clip(upper=3).map(dict(enumerate(STRATA)))


def split_patients(labels_df: pd.DataFrame, n_val: int = 1500,
                   seed: int = 0) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids), each in label-file order; no patientId is in both.

    When ``n_val`` is at least half the images, 20% (rounded, at least 1 of 2 or more) go to
    val instead. Each stratum
    gives val its proportional share (largest remainder, so within 1 image of exact); which
    images is a seeded draw, so the same labels and seed give the same split.
    """
    strata = strata_of(labels_df)
    n = len(strata)
    if n_val < 0:
        raise KitError(f"--n-val must be >= 0, got {n_val}")
    if n_val >= n / 2:     # at least one val image whenever one is asked for and two exist
        n_val = max(round(0.2 * n), 1 if n_val and n > 1 else 0)
    sizes = np.array([(strata == s).sum() for s in STRATA])
    exact = n_val * sizes / max(n, 1)
    share = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - share), kind="stable")[: n_val - share.sum()]:
        share[i] += 1
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for stratum, k in zip(STRATA, share):
        ids = strata.index[strata == stratum].to_numpy()
        val.update(ids[rng.permutation(len(ids))[:k]])
    train_ids = [pid for pid in strata.index if pid not in val]
    val_ids = [pid for pid in strata.index if pid in val]
    return train_ids, val_ids


def fold_of(labels_df: pd.DataFrame, folds: int, seed: int = 0) -> pd.Series:
    """Fold index (0 .. folds-1) per patientId, in label-file order; stratified and seeded.

    Within each stratum (0, 1, 2, 3+ boxes) the images are shuffled (seeded) and dealt round
    robin, the deal running on across strata: every fold gets floor or ceil of each stratum's
    n / folds images, and fold sizes differ by at most one image.
    """
    strata = strata_of(labels_df)
    if int(folds) != folds or folds < 2:
        raise KitError(f"folds must be an integer >= 2, got {folds}")
    if folds > len(strata):
        raise KitError(f"{folds} folds need at least {folds} images, the labels have {len(strata)}")
    rng = np.random.default_rng(seed)
    fold = pd.Series(-1, index=strata.index, dtype=np.int64)
    dealt = 0
    for stratum in STRATA:
        ids = strata.index[strata == stratum].to_numpy()
        fold[ids[rng.permutation(len(ids))]] = (dealt + np.arange(len(ids))) % folds
        dealt += len(ids)
    return fold


def fold_split(labels_df: pd.DataFrame, folds: int, fold: int,
               seed: int = 0) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) of fold ``fold`` of :func:`fold_of`, each in label-file order.

    The val sets of folds 0 .. folds-1 are disjoint and together hold every image once.
    """
    if int(fold) != fold or not 0 <= fold < folds:
        raise KitError(f"fold must be an integer in 0 .. {folds - 1}, got {fold}")
    assignment = fold_of(labels_df, folds, seed)
    in_val = (assignment == fold).to_numpy()
    ids = assignment.index.to_numpy()
    return ids[~in_val].tolist(), ids[in_val].tolist()


def read_split(path: str | Path) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) from a split CSV written by ``split``."""
    path = Path(path)
    df = read_csv(path, ("patientId", "split"), dtype=str, keep_default_na=False,
                  not_found="split file not found: run `python -m kit split`")
    bad = ~df["split"].isin(["train", "val"])
    if bad.any():
        raise KitError("split must be train or val", path=path, row=int(np.flatnonzero(bad)[0]) + 2,
                       field="split")
    return (df.loc[df["split"] == "train", "patientId"].tolist(),
            df.loc[df["split"] == "val", "patientId"].tolist())


def default_split_path(data_dir: Path) -> Path:
    """data/cache/<data folder name>-split.csv"""
    return paths.CACHE_DIR / f"{Path(data_dir).resolve().name}-split.csv"


def add_split_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder (default: data/rsna if present, else data/demo)")
    parser.add_argument("--n-val", type=int, default=1500,
                        help="val images (default 1500; 20%% when that is half the data or more)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output CSV (default: data/cache/<data folder name>-split.csv)")
    parser.add_argument("--force", action="store_true", help="replace an existing, different split")
    parser.description = (
        "Patient-level stratified train/val split, written as a patientId,split CSV. "
        "`python -m kit train --split CSV` trains on that split (its train_ids.csv and "
        "val_ids.csv) instead of the seeded n_val split it would otherwise draw.")


def run_split(args: argparse.Namespace) -> int:
    data = args.data or default_data_dir()
    labels = read_labels(data / paths.TRAIN_LABELS)
    train_ids, val_ids = split_patients(labels, args.n_val, args.seed)
    out = args.out or default_split_path(data)
    if out.is_file() and not args.force and read_split(out) != (train_ids, val_ids):
        raise KitError("a different split is already there (other --n-val/--seed or labels); "
                       "pass --force to replace it", path=out)
    table = pd.DataFrame({"patientId": train_ids + val_ids,
                          "split": ["train"] * len(train_ids) + ["val"] * len(val_ids)})
    write_csv(out, table)
    strata = strata_of(labels)
    in_val = strata.index.isin(val_ids)
    for stratum in STRATA:
        total = int((strata == stratum).sum())
        print(f"{stratum + ' boxes':<10} {total:>7,} images {int((in_val & (strata == stratum)).sum()):>6,} val")
    print(f"wrote {out}: {len(train_ids):,} train, {len(val_ids):,} val")
    return 0


def read_split_file(path: Path, data_dir: Path, folds: int = 0) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) of a split CSV, checked against the data set's labels before any
    run folder exists: every patientId labelled, none in both, both sets non-empty."""
    if folds:
        raise KitError(f"--split and folds={folds} both choose the validation images: "
                       "give one of them")
    train_ids, val_ids = read_split(path)
    known = set(read_labels(Path(data_dir) / paths.TRAIN_LABELS)["patientId"])
    for ids in (train_ids, val_ids):
        stray = [p for p in ids if p not in known]
        if stray:
            raise KitError(f"{len(stray)} patientId(s) are not in {data_dir}'s labels (first: "
                           f"{stray[0]!r}): a split of another data set?", path=path,
                           field="patientId")
    both = set(train_ids) & set(val_ids)
    if both:
        raise KitError(f"{len(both)} patientId(s) are in both train and val (first: "
                       f"{sorted(both)[0]!r})", path=path, field="patientId")
    if not train_ids or not val_ids:
        raise KitError("the split has no train or no val image", path=path, field="split")
    return train_ids, val_ids
