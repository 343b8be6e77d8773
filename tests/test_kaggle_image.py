"""Kaggle's image as a test target: the BUILT kernels run with .kaggle-env's Python 3.12 (the image's
pinned packages, requirements-kaggle.txt), outside the repo, on a fake /kaggle/input.

The env is built by `make kaggle-env` (cached by the hash of requirements-kaggle.txt). Without a
Python 3.12 (the Makefile's KAGGLE_PYTHON search finds none) every test here is skipped, saying why.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kit import cli, paths
from kit.score.submission import validate_submission
from kit.data.demo import make_dataset

# slow; with pytest-xdist (make test) on one worker: one .kaggle-env build, one kernel run each
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("kaggle_image")]

REPO = Path(__file__).resolve().parent.parent
KAGGLE_PY = REPO / ".kaggle-env" / "bin" / "python"
ABSENT_IN_IMAGE = ("ensemble_boxes", "imgaug", "pylibjpeg", "gdcm")
TF_CPP_LINE = re.compile(r"^[IWE]\d{4} |PredictCost")
MAX_TF_CPP_LINES = 3
BUILD_TIMEOUT_S = 3600   # a cold build downloads ~0.5 GB of wheels (about 1.5 min here)
KERNEL_TIMEOUT_S = 1500


def _make_env() -> dict[str, str]:
    """The environment for a `make` child: without the parent make's flags (jobserver, overrides)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def kaggle_python() -> str:
    """The Python 3.12 `make kaggle-env` would use (asks the Makefile, the one place that searches)."""
    proc = subprocess.run(["make", "-s", "--no-print-directory", "--eval",
                           "kaggle-python: ; @echo $(KAGGLE_PYTHON)", "kaggle-python"],
                          cwd=REPO, env=_make_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def pins() -> dict[str, str]:
    """name -> version of every `name==version` line of requirements-kaggle.txt (names lowercased)."""
    found = {}
    for line in (REPO / "requirements-kaggle.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            found[m.group(1).lower().replace("_", "-")] = m.group(2)
    return found


@pytest.fixture(scope="module")
def kaggle_env() -> Path:
    """.kaggle-env/bin/python, built (or found cached) by `make kaggle-env`."""
    if not kaggle_python():
        pytest.skip("no Python 3.12 (Kaggle's image runs 3.12): no working python3.12 on PATH and "
                    "none under $(pyenv root)/versions/3.12*; install one or set KAGGLE_PYTHON")
    start = time.monotonic()
    proc = subprocess.run(["make", "kaggle-env"], cwd=REPO, env=_make_env(),
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if proc.returncode:
        pytest.fail(f"make kaggle-env failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n"
                    f"{proc.stderr[-6000:]}")
    print(f"make kaggle-env: {time.monotonic() - start:.0f} s")
    assert KAGGLE_PY.is_file()
    return KAGGLE_PY


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (size, mtime_ns, mode) of everything under ``root`` (root included)."""
    entries = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns,
                                       stat.S_IMODE(p.lstat().st_mode)) for p in entries}


def _set_read_only(root: Path, read_only: bool) -> None:
    """chmod a-w (or u+w back) on every file and folder under ``root``, root included."""
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~0o222 if read_only else mode | stat.S_IWUSR)


@dataclass
class KernelRun:
    """One built kernel run: its exit code, log file (stdout + stderr), wall time, folders."""

    code: int
    log: Path
    seconds: float
    input: Path
    working: Path
    changed_input: list[str]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def explain(self) -> str:
        return f"kernel log {self.log} (exit {self.code}, last 8000 chars):\n{self.text()[-8000:]}"


def run_kernel(python: Path, script: Path, root: Path, input_dir: Path, name: str) -> KernelRun:
    """Run a built kernel script like Kaggle would: cwd outside the repo, no PYTHONPATH, HOME and
    every KIT_* folder under ``root``, tiny preset; ``input_dir`` read-only and checked unchanged."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "KIT_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for var in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):   # conftest's; Kaggle sets neither
        env.pop(var, None)
    working, cwd = root / f"working-{name}", root / f"cwd-{name}"
    cwd.mkdir()
    (root / "kit-tmp").mkdir(exist_ok=True)           # like /tmp: KIT_TMP names an existing folder
    env.update(KIT_KAGGLE_INPUT=str(input_dir), KIT_KAGGLE_WORKING=str(working),
               KIT_KAGGLE_SCRATCH=str(root / f"scratch-{name}"), KIT_TMP=str(root / "kit-tmp"),
               KIT_PRESET="tiny", HOME=str(root))
    _set_read_only(input_dir, True)
    before = _snapshot(input_dir)
    log = root / f"{name}.log"
    start = time.monotonic()
    try:
        with open(log, "w") as out:
            code = subprocess.run([str(python), str(script)], cwd=cwd, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=KERNEL_TIMEOUT_S).returncode
    finally:
        seconds = time.monotonic() - start
        after = _snapshot(input_dir)
        _set_read_only(input_dir, False)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    print(f"kernel {name}: exit {code} after {seconds:.0f} s; log {log}")
    return KernelRun(code, log, seconds, input_dir, working, changed)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """kernels/build/* rendered into a temporary folder (outside the repo)."""
    out = tmp_path_factory.mktemp("kernels")
    assert cli.main(["kernels", "build", "--owner", "someuser", "--build-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def full_run(kaggle_env, built, tmp_path_factory) -> KernelRun:
    root = tmp_path_factory.mktemp("kaggle-full")
    make_dataset(root / "input" / "competitions" / paths.COMPETITION,
                 n_train=16, n_test=4, size=64, seed=1)
    return run_kernel(kaggle_env, built / "full" / "kernel.py", root, root / "input", "full")


@pytest.fixture(scope="module")
def infer_run(kaggle_env, built, full_run, tmp_path_factory) -> KernelRun:
    """The infer kernel on a second input tree: the full kernel's run folder attached like the
    train kernel's output (rsna-kit-train/<run>/) beside the same competition data."""
    runs = sorted((full_run.working / "runs").glob("*/config.json")) if full_run.code == 0 else []
    if not runs:
        pytest.fail("the full kernel left no run folder to attach; " + full_run.explain())
    root = tmp_path_factory.mktemp("kaggle-infer")
    run = runs[-1].parent
    shutil.copytree(run, root / "input" / "rsna-kit-train" / run.name)
    shutil.copytree(full_run.input / "competitions", root / "input" / "competitions")
    return run_kernel(kaggle_env, built / "infer" / "kernel.py", root, root / "input", "infer")


def test_kaggle_env_matches_the_image_pins_and_lacks_what_the_image_lacks(kaggle_env):
    code = ("import importlib.util, json, sys, keras, numpy, tensorflow as tf; print(json.dumps("
            "{'python': '%d.%d' % sys.version_info[:2], 'tensorflow': tf.__version__, "
            "'keras': keras.__version__, 'numpy': numpy.__version__, 'present': "
            f"[m for m in {ABSENT_IN_IMAGE!r} if importlib.util.find_spec(m)]}}))")
    proc = subprocess.run([str(kaggle_env), "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=kaggle_env.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = pins()
    assert got["python"] == "3.12"
    assert got["tensorflow"] == want["tensorflow-cpu"] == want["tensorflow"]
    assert got["keras"] == want["keras"]
    assert got["numpy"] == want["numpy"]
    assert got["present"] == [], f"not in Kaggle's image, must not be importable: {got['present']}"


def test_built_full_kernel_writes_a_valid_submission_and_leaves_the_input_alone(full_run):
    assert full_run.code == 0, full_run.explain()
    log = full_run.text()
    assert "python 3.12." in log                              # really ran with the image's Python
    assert re.search(r"kit bundle sha256 [0-9a-f]{64}; kit from \S*kit-tmp", log), \
        "the kit must come from the script's own bundle, not the repo"
    for line in ("preflight: python 3.12", "transfer syntax 1.2.840.10008.1.2.4.50",
                 "preflight passed in", "] time budget 8h15m", "] epoch 2: val_map"):
        assert line in log, line                              # the kit's own lines, findable
    assert "\u2501" not in log                               # no Keras progress bar in a file
    sample = full_run.input / "competitions" / paths.COMPETITION / paths.SAMPLE_SUBMISSION
    sub = full_run.working / "submission.csv"
    assert validate_submission(sub, sample) == []
    assert full_run.changed_input == [], f"written under the input: {full_run.changed_input}"
    assert not (full_run.working / "data").exists()        # the cache stayed in scratch


def test_built_infer_kernel_predicts_from_an_attached_run(infer_run):
    assert infer_run.code == 0, infer_run.explain()
    sample = infer_run.input / "competitions" / paths.COMPETITION / paths.SAMPLE_SUBMISSION
    assert validate_submission(infer_run.working / "submission.csv", sample) == []
    assert infer_run.changed_input == [], f"written under the input: {infer_run.changed_input}"


def test_kernel_logs_hold_at_most_a_few_tensorflow_cpp_warnings(full_run, infer_run):
    """Kaggle sets no TF_CPP_MIN_LOG_LEVEL, and TF 2.20's grappler warnings ignore it anyway: the
    kernel itself keeps its log readable (kit.log.quiet_native_logs)."""
    for run in (full_run, infer_run):
        noisy = [line for line in run.text().splitlines() if TF_CPP_LINE.search(line)]
        assert len(noisy) <= MAX_TF_CPP_LINES, \
            f"{len(noisy)} TensorFlow C++ log lines in {run.log}, e.g.:\n" + "\n".join(noisy[:10])
