"""Shared test fixtures. The real stage-2 label CSVs live in ../shared/rsna when present."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# pytest-xdist: each worker's TensorFlow (and the kernels and scripts it starts) gets its share of
# the cores instead of a thread per core each, which oversubscribes them (make test: 2 workers on
# 2 cores -> one compute thread each; measured in bench/RESULTS.md)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(_share))

REPO = Path(__file__).resolve().parent.parent
SHARED_RSNA = REPO.parent / "shared" / "rsna"


def pytest_collection_modifyitems(config, items):
    """Longest first: the tests that share a built fixture (xdist groups), then the other slow
    ones, then the rest, each in file order. pytest-xdist hands out work in this order, so on
    `make test`'s two workers the minutes-long tests start at once and the hundreds of quick
    ones fill the gaps, instead of one worker starting a 3-minute test at the end."""
    def rank(item) -> int:
        if item.get_closest_marker("xdist_group"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2
    items.sort(key=rank)


@pytest.fixture(scope="session")
def real_rsna() -> Path:
    """Folder with the REAL stage-2 CSVs; the test is skipped when ../shared is absent."""
    if not (SHARED_RSNA / "stage_2_train_labels.csv").is_file():
        pytest.skip("../shared/rsna is not present (only the team's machines have it)")
    return SHARED_RSNA


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run a test inside an empty temporary working folder (data/, runs/, submissions/ land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_flow(tmp_path_factory) -> SimpleNamespace:
    """ONE whole tiny flow, built once per session and shared by the end-to-end tests
    (test_pipeline, test_preflight, test_train_selection): `submission --preset tiny --preflight
    --out final/submission.csv` on a 24 + 6 image demo set in its own folder. ``root``: that
    folder (data/, runs/, submissions/, final/), ``code``: the exit code, ``out``: its stdout.
    Tests that change the run put it back as they found it."""
    from kit import cli
    from kit.data.demo import make_dataset

    root = tmp_path_factory.mktemp("tiny-flow")
    before = os.getcwd()
    os.chdir(root)
    try:
        make_dataset(Path("data/demo"), n_train=24, n_test=6, size=128, seed=3)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["submission", "--preset", "tiny", "--preflight",
                             "--out", "final/submission.csv"])
    finally:
        os.chdir(before)
    return SimpleNamespace(root=root, code=code, out=out.getvalue())


@pytest.fixture
def in_flow(tiny_flow, monkeypatch) -> SimpleNamespace:
    """The shared tiny flow, with the test running inside its folder."""
    assert tiny_flow.code == 0, tiny_flow.out[-3000:]
    monkeypatch.chdir(tiny_flow.root)
    return tiny_flow


def load_bench(name: str):
    """``bench/<name>.py`` as a module (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli_without_tensorflow(calls: list[list[str]], cwd: Path) -> None:
    """Run ``kit.cli.main(argv)`` for each argv in a fresh process (cwd ``cwd``) and assert that
    every call succeeds and that TensorFlow / Keras were never imported."""
    import subprocess
    import sys

    code = ("import sys; from kit import cli\n"
            f"for argv in {calls!r}:\n"
            "    assert cli.main(argv) == 0, argv\n"
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
