"""``ensemble``: several runs' raw tables -> a NEW run folder that tune, submit, score and report
take like any run (``python -m kit ensemble --runs A B ... --name NAME``).

The members must have learned from one data set (``data_dir`` of their config.json). Their
validation sets decide the mode:

* ``folds`` (pairwise disjoint val sets, e.g. ``--set folds=5 fold=0..4``): raw_val.csv is the
  members' out-of-fold tables concatenated and val_ids.csv their union;
* ``shared-val`` (identical val sets, e.g. other seeds or backbones): raw_val.csv is their
  weighted box fusion (kit.infer.fusion.fuse_raw) and val_ids.csv that one set;
* anything else (val sets that partly overlap) is refused.

raw_test.csv is always the fusion of the members' test tables. The image classifier's scores
(raw_<split>_images.csv, kit.runs.IMAGE_COLUMNS) are concatenated for fold val sets and averaged
with the weights otherwise; a split's image scores are written only when every member has them.
config.json is the first member's config renamed to NAME; ensemble.json says where the tables
came from (members, mode, weights, iou_thr, conf_type, created). The folder is built under a
temporary name beside it and renamed into place, so runs/NAME is complete or absent.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kit import paths
from kit.config import RunConfig
from kit.errors import KitError
from kit.infer.fusion import check_weights, fuse_raw
from kit.io import write_csv, write_json
from kit.runs import IMAGE_COLUMNS, RAW_COLUMNS, image_scores_path, raw_path, resolve_run

CONF_TYPE = "avg"
RAW_VAL, RAW_TEST = raw_path(Path(), "val").name, raw_path(Path(), "test").name


@dataclass(frozen=True)
class Member:
    """One run of the ensemble: its folder, config and validation ids (val_ids.csv order)."""

    run: Path
    config: RunConfig
    val_ids: list[str]


def load_member(run: Path) -> Member:
    """A member run's config and val ids (KitError naming the file when one is missing)."""
    from kit.runs import read_ids

    for name in ("config.json", "val_ids.csv", "raw_val.csv", "raw_test.csv"):
        if not (run / name).is_file():
            raise KitError(f"run {run} has no {name}: an ensemble member needs config.json, "
                           "val_ids.csv and the raw tables of `python -m kit predict`",
                           path=run / name)
    return Member(run, RunConfig.load(run / "config.json"), read_ids(run / "val_ids.csv"))


def check_members(members: Sequence[Member]) -> str:
    """The mode, ``folds`` or ``shared-val``; KitError for fewer than two runs, a run given twice,
    runs of other data sets (config data_dir) or val sets that partly overlap."""
    if len(members) < 2:
        raise KitError("an ensemble needs at least two runs (--runs A B ...)")
    seen: dict[Path, Path] = {}
    for m in members:
        key = m.run.resolve()
        if key in seen:
            raise KitError(f"run {m.run} is given twice (also as {seen[key]})")
        seen[key] = m.run

    def data(m: Member) -> str:
        return str(Path(m.config.data_dir).resolve()) if m.config.data_dir else ""

    first = members[0]
    for m in members[1:]:
        if data(m) != data(first):
            raise KitError(f"run {m.run} learned from data_dir {m.config.data_dir!r} but run "
                           f"{first.run} from {first.config.data_dir!r}: ensemble runs of one "
                           "data set", path=m.run / "config.json", field="data_dir")
    sets = [set(m.val_ids) for m in members]
    if all(s == sets[0] for s in sets):
        return "shared-val"
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            if sets[i] & sets[j]:
                raise KitError(
                    f"runs {members[i].run} and {members[j].run} share "
                    f"{len(sets[i] & sets[j])} validation images but not all: ensemble folds "
                    "(disjoint val sets) or runs on one val set (seeds), not a mix")
    return "folds"


def _read_member_raw(m: Member, split: str, ids: set[str] | None) -> pd.DataFrame:
    from kit.runs import read_raw

    path = raw_path(m.run, split)
    raw = read_raw(path)
    if ids is not None:
        stray = ~raw["patientId"].isin(ids).to_numpy()
        if stray.any():
            raise KitError("this patientId is not a validation image of the run (val_ids.csv)",
                           path=path, row=int(np.flatnonzero(stray)[0]) + 2, field="patientId")
    return raw


def _image_table(members: Sequence[Member], split: str, concat: bool,
                 weights: np.ndarray) -> pd.DataFrame | None:
    """raw_<split>_images.csv of the ensemble, or None when a member has none."""
    from kit.runs import read_image_scores

    paths_ = [image_scores_path(m.run, split) for m in members]
    if not all(p.is_file() for p in paths_):
        return None
    scores = [read_image_scores(p) for p in paths_]
    if concat:
        for m, s, p in zip(members, scores, paths_):
            stray = sorted(set(s) - set(m.val_ids))
            if stray:
                raise KitError(f"{len(stray)} patientIds are not validation images of the run "
                               f"(first: {stray[0]!r})", path=p, field="patientId")
        return pd.DataFrame([(pid, v) for s in scores for pid, v in s.items()],
                            columns=IMAGE_COLUMNS)
    for s, p in zip(scores[1:], paths_[1:]):
        if set(s) != set(scores[0]):
            odd = sorted(set(s) ^ set(scores[0]))
            raise KitError(f"covers other images than {paths_[0]} ({len(odd)} differ, first: "
                           f"{odd[0]!r}): predict every member on the same images", path=p)
    ids = list(scores[0])
    p = sum(w * np.array([s[pid] for pid in ids]) for w, s in zip(weights, scores)) / weights.sum()
    return pd.DataFrame({"patientId": ids, "p_opacity": np.clip(p, 0.0, 1.0)},
                        columns=IMAGE_COLUMNS)


def _tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Fused rows rounded like ``predict`` writes them; boxes thinner than that dropped."""
    raw = raw[RAW_COLUMNS].round({"score": 5, "x": 1, "y": 1, "w": 1, "h": 1})
    return raw[(raw.w > 0) & (raw.h > 0)].reset_index(drop=True)


def build_tables(members: Sequence[Member], mode: str, weights: np.ndarray,
                 iou_thr: float) -> dict[str, pd.DataFrame]:
    """The ensemble's tables by file name: val_ids.csv, raw_val.csv, raw_test.csv and the
    raw_<split>_images.csv that every member has."""
    folds = mode == "folds"
    vals = [_read_member_raw(m, "val", set(m.val_ids)) for m in members]
    tests = [_read_member_raw(m, "test", None) for m in members]
    if folds:
        val_ids = [pid for m in members for pid in m.val_ids]
        raw_val = pd.concat(vals, ignore_index=True)[RAW_COLUMNS]
    else:
        val_ids = members[0].val_ids
        raw_val = _tidy(fuse_raw(vals, weights, iou_thr, CONF_TYPE))
    tables = {"val_ids.csv": pd.DataFrame({"patientId": val_ids}),
              RAW_VAL: raw_val,
              RAW_TEST: _tidy(fuse_raw(tests, weights, iou_thr, CONF_TYPE))}
    for split, concat in (("val", folds), ("test", False)):
        images = _image_table(members, split, concat, weights)
        if images is not None:
            tables[image_scores_path(Path(), split).name] = images
    return tables


def make_ensemble(runs: Sequence[str | Path], name: str, weights: Sequence[float] | None = None,
                  iou_thr: float = 0.55, runs_dir: Path = paths.RUNS_DIR,
                  force: bool = False) -> Path:
    """Write runs_dir/NAME from the member runs (see the module docstring); returns its path."""
    if not name or name in (".", "..", "latest") or Path(name).name != name or name.startswith("."):
        raise KitError(f"--name {name!r} must be a plain folder name (no '/', not 'latest')")
    runs_dir = Path(runs_dir)
    target = runs_dir / name
    if target.exists() and not force:
        raise KitError("the run folder exists: pass --force to replace it or choose another "
                       "--name", path=target)
    members = [load_member(resolve_run(r, runs_dir)) for r in runs]
    if any(m.run.resolve() == target.resolve() for m in members):
        raise KitError(f"run {target} cannot be a member of the ensemble that replaces it")
    mode = check_members(members)
    w = check_weights(weights, len(members))
    if not 0.0 <= iou_thr <= 1.0:
        raise KitError(f"--iou-thr must be in [0, 1] (got {iou_thr})")
    tables = build_tables(members, mode, w, iou_thr)
    runs_dir.mkdir(parents=True, exist_ok=True)
    tmp = runs_dir / f".{name}.{uuid.uuid4().hex}.tmp"     # mkdir: the umask's permissions
    tmp.mkdir()
    try:
        for file_name, table in tables.items():
            write_csv(tmp / file_name, table)
        dataclasses.replace(members[0].config, name=name).save(tmp / "config.json")
        write_json(tmp / "ensemble.json", {
            "members": [str(m.run) for m in members], "mode": mode, "weights": w.tolist(),
            "iou_thr": iou_thr, "conf_type": CONF_TYPE,
            "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        old = None
        if target.exists():
            old = runs_dir / f".{name}.{uuid.uuid4().hex}.old"
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    kind = "out-of-fold" if mode == "folds" else "fused"
    print(f"{mode}: {len(members)} runs, {len(tables['val_ids.csv'])} val images, "
          f"{len(tables[RAW_VAL])} val detections ({kind}), {len(tables[RAW_TEST])} fused test "
          "detections")
    return target


def add_ensemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True,
                   help="member runs (folders or names under --runs-dir): folds or one val set")
    p.add_argument("--name", required=True, help="the new run folder: RUNS_DIR/NAME")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per run for box fusion and image-score averages (default 1)")
    p.add_argument("--iou-thr", type=float, default=0.55,
                   help="weighted box fusion: boxes overlapping a cluster by IoU > this join it")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the run folders (default: runs/)")
    p.add_argument("--force", action="store_true", help="replace an existing RUNS_DIR/NAME")


def run_ensemble(args: argparse.Namespace) -> int:
    out = make_ensemble(args.runs, args.name, args.weights, args.iou_thr, args.runs_dir,
                        args.force)
    print(f"wrote {out}")
    return 0
