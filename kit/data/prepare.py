"""Prepared-image cache: every DICOM decoded once and resized to S x S uint8; command ``prepare``.

Layout of a cache folder (default ``data/cache/<data folder name>-<S>/``)::

    cache.json            {"size": S, "data": ..., "splits": {"train": {"images": n, "skipped": [...]}, ...}}
    meta.csv              patientId, split, orig_height, orig_width, scale, PatientAge, PatientSex, ViewPosition
    train/<patientId>.npy uint8 (S, S), one file per image (np.load: ~0.1 ms at 512 px)
    test/<patientId>.npy

``scale`` = S / original longer side: a box in original pixels (x, y, w, h) is at
(x, y, w, h) * scale in the cached image (a non-square original is padded bottom/right).
The train images are the label file's patientIds, the test images the sample submission's.
Resumable: an image counts as done once its .npy exists, and .npy files appear by rename only.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from kit import paths
from kit.data import dicom
from kit.errors import KitError
from kit.io import atomic_open, write_csv, write_json
from kit.data.labels import read_labels, read_sample_submission
from kit.paths import default_data_dir

SPLITS = {"train": paths.TRAIN_IMAGES, "test": paths.TEST_IMAGES}
META_COLUMNS = ["patientId", "split", "orig_height", "orig_width", "scale", "PatientAge",
                "PatientSex", "ViewPosition"]
_HOW_TO_PREPARE = "run `python -m kit prepare` (make prepare)"


class Cache:
    """Read side of a prepared cache folder: ``size``, ``meta``, ``ids(split)``, ``load(pid)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        info_path, meta_path = self.path / "cache.json", self.path / "meta.csv"
        if not info_path.is_file() or not meta_path.is_file():
            raise KitError(f"not a prepared cache (no cache.json/meta.csv): {_HOW_TO_PREPARE}",
                           path=self.path)
        self.info = json.loads(info_path.read_text())
        self.size: int = int(self.info["size"])
        self.meta: pd.DataFrame = pd.read_csv(meta_path, dtype={
            "patientId": str, "split": str, "orig_height": int, "orig_width": int, "scale": float,
            "PatientAge": "Int64", "PatientSex": str, "ViewPosition": str}, keep_default_na=False,
            na_values={"PatientAge": [""]})
        self._split_of = dict(zip(self.meta["patientId"], self.meta["split"]))

    def ids(self, split: str) -> list[str]:
        """patientIds of ``train`` or ``test`` in the cache (label / sample-submission order)."""
        if split not in self.info.get("splits", {}):
            raise KitError(f"the {split} images are not prepared: run `python -m kit prepare "
                           f"--split {split}`", path=self.path)
        return self.meta.loc[self.meta["split"] == split, "patientId"].tolist()

    def load(self, patient_id: str) -> np.ndarray:
        """The prepared image: uint8 (size, size)."""
        split = self._split_of.get(patient_id)
        if split is None:
            raise KitError(f"patientId {patient_id!r} is not in the cache", path=self.path)
        return np.load(self.path / split / f"{patient_id}.npy")


def default_cache_dir(data_dir: str | Path, size: int) -> Path:
    """data/cache/<data folder name>-<size>"""
    return paths.CACHE_DIR / f"{Path(data_dir).resolve().name}-{size}"


def _split_ids(data_dir: Path, split: str) -> list[str]:
    if split == "train":
        return list(dict.fromkeys(read_labels(data_dir / paths.TRAIN_LABELS)["patientId"]))
    return read_sample_submission(data_dir / paths.SAMPLE_SUBMISSION)["patientId"].tolist()


def _meta_row(patient_id: str, split: str, header: dict, size: int) -> dict:
    return {"patientId": patient_id, "split": split, "orig_height": header["Rows"],
            "orig_width": header["Columns"],
            "scale": size / max(header["Rows"], header["Columns"]),
            "PatientAge": header["PatientAge"], "PatientSex": header["PatientSex"],
            "ViewPosition": header["ViewPosition"]}


def _prepare_one(task: tuple[str, str, Path, Path, int]
                 ) -> tuple[dict | None, str | None, dict[str, str]]:
    """Decode one DICOM into its .npy (temp + rename): (meta row, None, notes) or (None, error,
    {}). Any exception while reading the file (a damaged header value included) is that file's
    one-line error, so one bad file never stops the others; ``notes`` are the reader's
    conversions ({kind: line}, see dicom.read_image)."""
    patient_id, split, src, dst, size = task
    try:
        arr, header = dicom.read_image(src, size)
        row = _meta_row(patient_id, split, header, size)
    except KitError as exc:
        return None, str(exc), {}
    except Exception as exc:   # damage the reader did not foresee: still only this file
        return None, f"{src}: unreadable ({dicom.one_line(exc)})", {}
    with atomic_open(dst, "wb", fsync=False) as fh:   # a full disk: one line, nothing half-written
        np.save(fh, arr)
    return row, None, dict(header.get("notes") or {})


def _run_tasks(tasks: Sequence[tuple], workers: int) -> Iterator[tuple]:
    """Results of ``_prepare_one`` in task order: in-process for 1 worker, else worker processes."""
    if workers <= 1:
        yield from map(_prepare_one, tasks)
        return
    # fork starts workers instantly (no ~1 s re-import each); spawn once TensorFlow's threads exist
    fork = "fork" in multiprocessing.get_all_start_methods() and "tensorflow" not in sys.modules
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        try:
            yield from pool.map(_prepare_one, tasks, chunksize=8)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def prepare(data_dir: str | Path, size: int = 512, out: str | Path | None = None,
            workers: int | None = None, splits: Iterable[str] = ("train", "test")) -> Cache:
    """Decode + resize the ``splits`` of ``data_dir`` (Kaggle layout) into a cache; resumes.

    A file that cannot be read is skipped, listed in cache.json (``skipped``) and on stderr at
    the end, one line each, and the rest is prepared; a rerun tries it again. A skipped train
    image is left out of training; a skipped test image is left out of predict, so every
    submission gives it an empty PredictionString (said as an error line). A split none of whose
    images can be read is left unfinished and raises KitError. Conversions a reader should know
    about (colour films, a replaced window) are one warning line per kind.
    """
    data_dir = Path(data_dir)
    if size < 16:
        raise KitError(f"--size must be >= 16 px, got {size}")
    splits = list(dict.fromkeys(splits))
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise KitError(f"unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    out = Path(out) if out is not None else default_cache_dir(data_dir, size)
    info_path, meta_path = out / "cache.json", out / "meta.csv"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"size": size, "splits": {}}
    if info["size"] != size:
        raise KitError(f"this cache holds {info['size']} px images, not {size}: use another --out",
                       path=out)
    info["data"] = str(data_dir.resolve())
    old_meta = pd.read_csv(meta_path, dtype={"patientId": str}, keep_default_na=False) \
        if meta_path.is_file() else pd.DataFrame(columns=META_COLUMNS)
    known = {row["patientId"]: row for row in old_meta.to_dict("records")}
    ids = {split: _split_ids(data_dir, split) for split in splits}   # validate CSVs before work
    tasks, done = [], 0
    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
        for stale in (out / split).glob(".*.tmp"):   # left by a killed run
            stale.unlink()
        for pid in ids[split]:
            src, dst = data_dir / SPLITS[split] / f"{pid}.dcm", out / split / f"{pid}.npy"
            if pid not in known and dst.is_file():   # finished by a killed run: re-read its header
                try:
                    known[pid] = _meta_row(pid, split, dicom.read_metadata(src), size)
                except Exception:   # the file changed since: decode it again, reporting why not
                    dst.unlink()
            if not dst.is_file():
                tasks.append((pid, split, src, dst, size))
                continue
            done += 1
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    bad: dict[str, list[str]] = {split: [] for split in splits}
    notes: dict[str, list[str]] = {}
    finished = False
    try:
        results = _run_tasks(tasks, workers)
        for task, (row, error, converted) in tqdm(zip(tasks, results), total=len(tasks),
                                                  desc=f"prepare {size}px", unit="img"):
            if error is None:
                known[task[0]] = row
            else:
                bad[task[1]].append(error)
            for kind, line in converted.items():
                notes.setdefault(kind, []).append(line)
        finished = True
    finally:   # also on Ctrl-C: record what is finished, a rerun resumes
        rows = [known[pid] for split in SPLITS
                for pid in ids.get(split, old_meta.loc[old_meta["split"] == split, "patientId"])
                if pid in known and (out / split / f"{pid}.npy").is_file()]
        counts = {split: sum(r["split"] == split for r in rows) for split in splits}
        hopeless = [split for split in splits if bad[split] and not counts[split]]
        for split in splits:
            info["splits"].pop(split, None)
            if finished and split not in hopeless:
                info["splits"][split] = {"images": counts[split], "skipped": bad[split]}
        write_csv(meta_path, pd.DataFrame(rows, columns=META_COLUMNS))
        write_json(info_path, info)
    n_bad = sum(map(len, bad.values()))
    for split in splits:
        for error in bad[split]:
            print(f"warning: skipped {error}" if split == "train" else
                  f"error: skipped test image {error}", file=sys.stderr)
    for lines in notes.values():   # one line per kind of conversion, once per prepare
        more = f" (and {len(lines) - 1} more image(s) like it)" if len(lines) > 1 else ""
        print(f"warning: {lines[0]}{more}", file=sys.stderr)
    print(f"cache {out}: {len(tasks) - n_bad} decoded, {done} already there, {n_bad} unreadable",
          file=sys.stderr)
    if hopeless:   # not one image to work with: stop here, not in a later step
        raise KitError(f"all {len(bad[hopeless[0]])} {hopeless[0]} image(s) unreadable (listed "
                       "above): replace them (make data) and rerun", path=out)
    if bad.get("test"):
        print(f"error: {len(bad['test'])} test image(s) unreadable (listed above): predict leaves "
              "them out, so submissions give them an empty PredictionString; replace them "
              "(make data) and rerun prepare", file=sys.stderr)
    return Cache(out)


def add_prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder (default: data/rsna if present, else data/demo)")
    parser.add_argument("--size", type=int, default=512, help="cached image side in px (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--out", type=Path, default=None,
                        help="cache folder (default: data/cache/<data folder name>-<size>)")
    parser.add_argument("--split", choices=["train", "test", "all"], default="all",
                        help="which images (default all)")


def run_prepare(args: argparse.Namespace) -> int:
    splits = tuple(SPLITS) if args.split == "all" else (args.split,)
    cache = prepare(args.data or default_data_dir(), args.size, args.out, args.workers, splits)
    counts = ", ".join(f"{len(cache.ids(s)):,} {s}" for s in splits)
    print(f"prepared {counts} images at {cache.size} px in {cache.path}")
    return 0


def as_rgb(gray: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> uint8 (H, W, 3): the network (and COCO weights) take three channels."""
    return np.repeat(gray[..., None], 3, axis=-1)
