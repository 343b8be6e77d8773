"""The in-kernel driver: what a kernel script runs inside a Kaggle session (and locally against a
fake /kaggle/input).

A kernel entry script (kernels/<name>/kernel.py) defines ``steps(k) -> list[argv]`` and calls
``runtime.main(steps)``; each argv is run with ``kit.cli.main`` in order. Folders come from
flags, else environment variables, else Kaggle's own mounts:

- ``--input``  / KIT_KAGGLE_INPUT   (default /kaggle/input: attached data, read-only)
- ``--working``/ KIT_KAGGLE_WORKING (default /kaggle/working: what ``kernels output`` downloads)
- ``--preset`` / KIT_PRESET         (default "kaggle")
- ``--scratch`` / KIT_KAGGLE_SCRATCH (default /kaggle/temp on Kaggle, else $TMP/rsna-kit-scratch):
  the working directory the steps run in, so relative outputs such as the prepared-image cache
  (data/cache) stay out of /kaggle/working (whose files all become the kernel's output).
- KIT_SET: config overrides, a JSON list of "KEY=VALUE" (``kernels build --set`` bakes it in)
- KIT_TIME_BUDGET (default DEFAULT_BUDGET): the session's budget, counted from the kernel's start
- KIT_PREFLIGHT (default 1): run the 2-image preflight before the long run; 0 skips it
- ``--dry-run``: find the inputs, print the versions and the commands, run nothing.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from kit import paths
from kit.errors import KitError
from kit.kaggle.kernels import BUDGET_ENV, DEFAULT_BUDGET, PRESET_ENV, SET_ENV
from kit.runs import checkpoints, run_order

INPUT_ENV, WORKING_ENV, SCRATCH_ENV = "KIT_KAGGLE_INPUT", "KIT_KAGGLE_WORKING", "KIT_KAGGLE_SCRATCH"
RUN_ENV, PREFLIGHT_ENV = "KIT_RUN", "KIT_PREFLIGHT"
DEFAULT_INPUT, DEFAULT_WORKING, DEFAULT_PRESET = Path("/kaggle/input"), Path("/kaggle/working"), "kaggle"
SEARCH_DEPTH = 4   # folder levels below the input root searched for data and run folders


@dataclass(frozen=True)
class KernelPaths:
    """Where a kernel reads (``input``), writes its outputs (``working``) and runs (``scratch``),
    the preset it trains (with ``overrides``), whether it runs the preflight, and whether it
    only prints its plan (``dry_run``)."""

    input: Path
    working: Path
    scratch: Path
    preset: str
    dry_run: bool
    overrides: tuple[str, ...] = ()
    preflight: bool = True

    def set_args(self) -> list[str]:
        """``--set KEY=VALUE`` pairs of the overrides, for a kit command line."""
        return [a for item in self.overrides for a in ("--set", item)]

    def preflight_args(self) -> list[str]:
        return ["--preflight", "--scratch", str(self.scratch)] if self.preflight else []


def parse_args(argv: Sequence[str] | None = None) -> KernelPaths:
    """Flags over environment variables over Kaggle defaults (unknown flags are ignored)."""
    env = os.environ
    parser = argparse.ArgumentParser(description="rsna-kit Kaggle kernel")
    parser.add_argument("--input", type=Path, default=Path(env.get(INPUT_ENV) or DEFAULT_INPUT))
    parser.add_argument("--working", type=Path,
                        default=Path(env.get(WORKING_ENV) or DEFAULT_WORKING))
    parser.add_argument("--scratch", type=Path, default=Path(env.get(SCRATCH_ENV) or _scratch()))
    parser.add_argument("--preset", default=env.get(PRESET_ENV) or DEFAULT_PRESET)
    parser.add_argument("--dry-run", action="store_true")
    args, _ = parser.parse_known_args(argv)
    try:
        overrides = tuple(json.loads(env.get(SET_ENV) or "[]"))
    except ValueError:
        raise KitError(f"{SET_ENV} must be a JSON list of \"KEY=VALUE\" strings") from None
    return KernelPaths(args.input.resolve(), args.working.resolve(), args.scratch.resolve(),
                       args.preset, args.dry_run, overrides,
                       env.get(PREFLIGHT_ENV, "1").strip().lower() not in ("0", "false", "no"))


def _scratch() -> Path:
    kaggle_temp = Path("/kaggle/temp")
    if kaggle_temp.parent.is_dir():
        return kaggle_temp
    return Path(tempfile.gettempdir()) / "rsna-kit-scratch"


def _shallow_find(root: Path, predicate: Callable[[Path], bool], depth: int) -> list[Path]:
    """Folders under ``root`` (down to ``depth`` levels, ``root`` included) that satisfy predicate."""
    found, level = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            if predicate(folder):
                found.append(folder)
            try:
                nxt += sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
            except OSError:
                continue
        level = nxt
    return found


def find_competition_data(root: Path, slug: str = paths.COMPETITION) -> Path:
    """The folder holding stage_2_train_labels.csv: root/competitions/<slug>, root/<slug>, or
    the first one found searching a few levels below ``root``."""
    root = Path(root)
    for candidate in (root / "competitions" / slug, root / slug):
        if (candidate / paths.TRAIN_LABELS).is_file():
            return candidate
    found = _shallow_find(root, lambda p: (p / paths.TRAIN_LABELS).is_file(), SEARCH_DEPTH)
    if not found:
        raise KitError(f"no {paths.TRAIN_LABELS} under {root} (looked in competitions/{slug}, "
                       f"{slug} and {SEARCH_DEPTH} levels down): attach the competition data "
                       "(competition_sources) or pass --input", path=root)
    return found[0]


def find_run(root: Path) -> Path:
    """A run folder (has config.json) in the attached inputs; KIT_RUN names one explicitly.
    With several, the newest by the timestamp in its name (see ``run_order``)."""
    if os.environ.get(RUN_ENV):
        run = Path(os.environ[RUN_ENV])
        if not (run / "config.json").is_file():
            raise KitError(f"{RUN_ENV} is not a run folder (no config.json)", path=run)
        return run
    found = _shallow_find(Path(root), lambda p: (p / "config.json").is_file(), SEARCH_DEPTH + 1)
    if not found:
        raise KitError(f"no run folder (config.json) under {root}: attach the output of the train "
                       f"kernel (kernel_sources) or a dataset holding a run, or set {RUN_ENV}",
                       path=root)
    return max(found, key=run_order)


def find_previous_run(root: Path) -> Path | None:
    """The newest run folder with a checkpoint in the attached inputs (the train kernel's own
    previous output when pushed with --continue), or None."""
    found = _shallow_find(Path(root), lambda p: (p / "config.json").is_file()
                          and bool(checkpoints(p)), SEARCH_DEPTH + 1)
    return max(found, key=run_order) if found else None


def working_copy(run: Path, k: KernelPaths, data_dir: Path) -> Path:
    """Copy a (read-only) input run folder under ``working/runs`` so later steps can write in it,
    pointing its config at ``data_dir`` (the data may be mounted elsewhere than where it trained)."""
    import dataclasses

    from kit.config import RunConfig

    dest = k.working / "runs" / run.name
    if not k.dry_run:
        if not dest.exists():
            shutil.copytree(run, dest)
        cfg = RunConfig.load(dest / "config.json")
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
        cfg.save(dest / "config.json")
    return dest


def report_versions(import_tf: bool) -> None:
    """Print Python, kit bundle, TensorFlow/Keras versions and (when ``import_tf``) the GPUs."""
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"kit bundle sha256 {os.environ.get('KIT_BUNDLE_SHA256', '(not bundled)')}; "
          f"kit from {Path(__file__).resolve().parent.parent}")
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "pydicom", "numpy"):
        try:
            print(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if import_tf:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        print(f"GPUs: {len(gpus)} {[g.name for g in gpus]}")


def main(steps: Callable[[KernelPaths], list[list[str]]],
         argv: Sequence[str] | None = None) -> int:
    """Resolve folders, print versions, then run each step with ``kit.cli.main``; exit code."""
    from kit import cli
    from kit.budget import Budget, format_duration
    from kit.log import quiet_native_logs, say

    quiet_native_logs()        # a kernel log is a file: no C++ warning flood

    try:
        k = parse_args(argv)
        budget = Budget.start(os.environ.get(BUDGET_ENV) or DEFAULT_BUDGET)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.update(budget.to_env())     # every step counts from the kernel's start
    say(f"kernel: input {k.input}  working {k.working}  scratch {k.scratch}  preset {k.preset}"
        f"{'  set ' + ' '.join(k.overrides) if k.overrides else ''}  time budget "
        f"{format_duration(budget.seconds)}  preflight {'on' if k.preflight else 'off'}")
    report_versions(import_tf=not k.dry_run)
    try:
        plan = steps(k)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not k.dry_run:
        k.working.mkdir(parents=True, exist_ok=True)
        k.scratch.mkdir(parents=True, exist_ok=True)
        os.chdir(k.scratch)
    for argv_ in plan:
        print("$ python -m kit " + " ".join(argv_), flush=True)
        if k.dry_run:
            continue
        start = time.time()
        code = cli.main(argv_)
        say(f"{argv_[0]}: exit {code} after {time.time() - start:.0f} s; time budget left "
            f"{format_duration(budget.left())}")
        if code:
            return code
    return 0
