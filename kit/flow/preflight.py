"""Preflight: fail in the first minutes, not the ninth hour.

``python -m kit submission --preflight`` (kernels always pass it) first prints the environment
(Python, TensorFlow, Keras, NumPy, the GPUs, the first DICOM's transfer syntax, free disk in the
working and scratch folders), imports everything the flow needs, then runs the WHOLE flow
(train -> predict with the run's TTA -> tune -> submit -> score -> report) on 2 train and 2 test
images with one step per stage, in a scratch folder it deletes afterwards. Any failure ends the
command with one error line (the traceback goes to preflight-error.txt) before training starts.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

from kit import paths
from kit.errors import KitError
from kit.io import write_csv, write_text
from kit.log import say

# what the flow imports, beyond the standard library (a kernel has only Kaggle's image)
MODULES = ("numpy", "pandas", "PIL", "pydicom", "h5py", "tqdm", "matplotlib", "albumentations",
           "tensorflow", "keras", "kit.mrcnn.model", "kit.mrcnn.training", "kit.infer.predict",
           "kit.infer.fusion", "kit.score.tune", "kit.score.submission", "kit.report.report",
           "kit.train.callbacks", "kit.train.image_head")
N_IMAGES = 2
SUBSET = "rsna-kit-preflight"
DATA = f"{SUBSET}-data"      # the subset's data folder (its cache: data/cache/<DATA>-<size>)


def add_preflight_args(p, scratch_default: str) -> None:
    """``--preflight`` and ``--scratch`` on a command's argparse parser."""
    p.add_argument("--preflight", action="store_true",
                   help="first run the whole flow on 2 images, 1 step per stage, in a scratch "
                        "folder; one error line and no training if anything fails (kernels do)")
    p.add_argument("--scratch", type=Path, default=None,
                   help=f"scratch folder of the preflight (default: {scratch_default})")


def environment(data_dir: Path, folders: dict[str, Path]) -> list[str]:
    """Lines describing the environment: versions, GPUs, the first DICOM's transfer syntax and
    free disk of ``folders`` (name -> folder)."""
    import platform

    import numpy as np
    import pydicom
    import tensorflow as tf

    from kit.data import dicom

    import keras

    gpus = tf.config.list_physical_devices("GPU")
    lines = [f"python {platform.python_version()}, tensorflow {tf.__version__}, keras "
             f"{keras.__version__}, numpy {np.__version__}, pydicom {pydicom.__version__}",
             f"GPUs: {len(gpus)} {[g.name for g in gpus]}"]
    first = next(iter(sorted((data_dir / paths.TRAIN_IMAGES).glob("*.dcm"))), None)
    if first is None:
        raise KitError("no .dcm file", path=data_dir / paths.TRAIN_IMAGES)
    uid = dicom.read_metadata(first)["TransferSyntaxUID"]
    lines.append(f"first DICOM {first.name}: transfer syntax {uid} "
                 f"({pydicom.uid.UID(uid).name})")
    for name, folder in folders.items():
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        lines.append(f"free disk in {name} ({folder}): {shutil.disk_usage(probe).free / 2**30:.1f} GiB")
    return lines


def make_subset(data_dir: Path, out: Path, n: int = N_IMAGES) -> Path:
    """A data folder in Kaggle's layout with ``n`` train images (positives and negatives
    alternating, label order) and ``n`` test images; the DICOMs are symlinks."""
    from kit.data.labels import read_class_info, read_labels, read_sample_submission

    labels = read_labels(data_dir / paths.TRAIN_LABELS)
    first = labels.drop_duplicates("patientId")
    pos = first[first.Target == 1].patientId.tolist()
    neg = first[first.Target == 0].patientId.tolist()
    picked = [pid for pair in zip(pos, neg) for pid in pair][:n] or first.patientId.tolist()[:n]
    if len(picked) < n:
        picked = first.patientId.tolist()[:n]
    sample = read_sample_submission(data_dir / paths.SAMPLE_SUBMISSION).head(n)
    write_csv(out / paths.TRAIN_LABELS, labels[labels.patientId.isin(picked)])
    if (data_dir / paths.CLASS_INFO).is_file():
        info = read_class_info(data_dir / paths.CLASS_INFO)
        write_csv(out / paths.CLASS_INFO, info[info.patientId.isin(picked)])
    write_csv(out / paths.SAMPLE_SUBMISSION, sample)
    for folder, ids in ((paths.TRAIN_IMAGES, picked), (paths.TEST_IMAGES, sample.patientId)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for pid in ids:
            (out / folder / f"{pid}.dcm").symlink_to((data_dir / folder / f"{pid}.dcm").resolve())
    return out


def quick_overrides(cfg) -> list[str]:
    """--set items that turn a preset into the preflight's run: one epoch and one step per
    stage, one val image, nothing else changed (size, backbone, weights, TTA stay)."""
    import json

    stages = [dict(dataclasses.asdict(s), epochs=1) for s in cfg.stages]
    return ["steps_per_epoch=1", "validation_steps=1", "n_val=1", "val_map_images=1",
            "val_map_from=1", "folds=0",
            "workers=1", f"stages={json.dumps(stages)}"]


def run_preflight(data_dir: Path, preset: str, overrides: list[str], weights: Path | None,
                  scratch: Path, working: Path, flow: Callable[[list[str]], int]) -> float:
    """Run the preflight; returns its seconds, or raises KitError with one line.

    ``flow`` runs the ``submission`` command on its arguments (kit.flow.submission.run_argv;
    passed in so this module does not import the flow that imports it)."""
    from kit.config import get_preset

    start = time.time()
    step = "environment"
    root = Path(scratch) / SUBSET
    saved = {k: os.environ.pop(k) for k in ("KIT_TIME_BUDGET", "KIT_TIME_BUDGET_DEADLINE")
             if k in os.environ}     # the 2-image flow runs outside the budget
    try:
        for line in environment(Path(data_dir), {"working": working, "scratch": scratch}):
            say(f"preflight: {line}")
        step = "imports"
        for name in MODULES:
            importlib.import_module(name)
        step = "subset"
        shutil.rmtree(root, ignore_errors=True)
        make_subset(Path(data_dir), root / DATA)
        cfg = get_preset(preset, overrides)
        step = "flow"
        argv = ["--data", str(root / DATA), "--preset", preset,
                "--workdir", str(root), "--new",
                *[a for o in [*overrides, *quick_overrides(cfg)] for a in ("--set", o)]]
        if weights:
            argv += ["--weights", str(weights)]
        say("preflight: the whole flow on 2 train + 2 test images, 1 step per stage")
        flow(argv)                   # errors propagate: reported below as one line
    except Exception as exc:  # noqa: BLE001  (any failure: one line, traceback to a file)
        trace = Path(working) / "preflight-error.txt"
        write_text(trace, traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise KitError(f"preflight failed at {step}: {type(exc).__name__}: {first} "
                       f"(traceback in {trace})") from None
    finally:
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)
        for folder in paths.CACHE_DIR.glob(f"{DATA}-*"):   # the subset's cache: <folder>-<size>
            shutil.rmtree(folder, ignore_errors=True)
    seconds = time.time() - start
    say(f"preflight passed in {seconds:.0f} s")
    return seconds
