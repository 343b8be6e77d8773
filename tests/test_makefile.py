"""The Makefile, by dry runs (`make -n`: nothing is installed): GPU detection picks the TensorFlow
build, the venv stamp is keyed on it, `make help` documents every target, CI calls `make test`."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU_SWAP = 'pip install -q "tensorflow[and-cuda]==$v"'
CHECK = """python -c "import tensorflow as tf; print(tf.config.list_physical_devices('\\''GPU'\\''))\""""


def fake_bin(folder: Path, nvidia_smi: str) -> Path:
    """A bin folder (to put first on PATH) holding an ``nvidia-smi`` that runs ``nvidia_smi`` (sh)."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + nvidia_smi + "\n")
    tool.chmod(0o755)
    return folder


def make(*args: str, path_first: Path | None = None, env_extra: dict | None = None
         ) -> subprocess.CompletedProcess:
    """`make ARGS` in the repo, with ``path_first`` ahead on PATH and no inherited make flags."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GPU", "KAGGLE_PYTHON")}
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    env.update(env_extra or {})
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def req_hash(name: str = "requirements.txt") -> str:
    return hashlib.sha256((REPO / name).read_bytes()).hexdigest()[:12]


GPU_LISTED = 'echo "GPU 0: Tesla T4 (UUID: x)"'
DRIVER_BROKEN = ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA '
                 'driver."; exit 9')


@pytest.mark.parametrize("nvidia_smi, gpu_arg, want_gpu", [
    (GPU_LISTED, None, True),          # auto: nvidia-smi -L lists a GPU
    (DRIVER_BROKEN, None, False),      # auto: nvidia-smi present but failing
    ("exit 127", None, False),         # auto: as if nvidia-smi were not installed
    (GPU_LISTED, "GPU=0", False),      # forced CPU
    (DRIVER_BROKEN, "GPU=1", True),    # forced GPU
])
def test_dry_run_setup_installs_the_build_nvidia_smi_asks_for(tmp_path, nvidia_smi, gpu_arg,
                                                             want_gpu):
    venv = tmp_path / "venv"
    bin_dir = fake_bin(tmp_path / "bin", nvidia_smi)
    args = ["-n", "setup", f"VENV={venv}"] + ([gpu_arg] if gpu_arg else [])
    out = make(*args, path_first=bin_dir).stdout
    assert f"{venv}/bin/pip install -q -r requirements.txt -c constraints.txt" in out
    assert (GPU_SWAP in out) is want_gpu
    assert (f"{venv}/bin/pip uninstall -y -q tensorflow-cpu" in out) is want_gpu
    assert ('pip install -q --force-reinstall --no-deps "tensorflow==$v"' in out) is want_gpu
    stamp = f"touch {venv}/.stamp-{req_hash()}-{req_hash('constraints.txt')}" + ("-gpu" if want_gpu else "")
    assert re.search(rf"^{re.escape(stamp)}$", out, re.MULTILINE), out
    # the GPU line comes after requirements.txt (it swaps the tensorflow-cpu that file installed)
    if want_gpu:
        assert out.index("install -q -r requirements.txt") < out.index(GPU_SWAP)
    assert CHECK in out                                    # tells the user how to check


@pytest.mark.parametrize("existing, gpu_arg, rebuilt", [
    ("", "GPU=1", True),               # CPU venv, GPU asked: fresh venv
    ("-gpu", "GPU=0", True),           # GPU venv, CPU asked: fresh venv
    ("-gpu", "GPU=1", False),          # same build: the venv stays (stamp present: nothing to do)
])
def test_switching_builds_starts_a_fresh_venv(tmp_path, existing, gpu_arg, rebuilt):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / f".stamp-{req_hash()}-{req_hash('constraints.txt')}{existing}").touch()
    out = make("-n", "setup", f"VENV={venv}", gpu_arg,
               path_first=fake_bin(tmp_path / "bin", "exit 1")).stdout
    assert (f"rm -rf {venv}\n" in out) is rebuilt
    assert (f"{venv}/bin/pip install -q -r requirements.txt" in out) is rebuilt


def test_a_changed_requirements_file_rebuilds_in_place(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".stamp-000000000000").touch()           # an older requirements.txt, same (CPU) build
    out = make("-n", "setup", f"VENV={venv}", "GPU=0").stdout
    assert f"{venv}/bin/pip install -q -r requirements.txt" in out
    assert f"rm -rf {venv}\n" not in out


def test_kaggle_env_is_its_own_venv_keyed_on_its_requirements():
    out = make("-n", "-B", "kaggle-env", "KAGGLE_PYTHON=/opt/py312/bin/python3.12").stdout
    assert "rm -rf .kaggle-env\n" in out and "/opt/py312/bin/python3.12 -m venv .kaggle-env" in out
    assert ".kaggle-env/bin/pip install -q -r requirements-kaggle.txt" in out
    assert f"touch .kaggle-env/.stamp-{req_hash('requirements-kaggle.txt')}" in out
    assert ".venv" not in out


def test_kaggle_env_without_python312_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "kaggle-env", "KAGGLE_PYTHON=",
                           f"KAGGLE_VENV={tmp_path / 'kenv'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "no Python 3.12 found" in proc.stderr and "KAGGLE_PYTHON=" in proc.stderr
    assert not (tmp_path / "kenv").exists()


def test_help_lists_every_target_with_a_description():
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", text, re.MULTILINE))
    phony = set(re.search(r"^\.PHONY:(.*?)(?<!\\)$", text, re.MULTILINE | re.DOTALL)
                .group(1).replace("\\", " ").split())
    assert targets == phony, "every target is .PHONY and every .PHONY name is a target"
    assert {"setup", "test", "kaggle-env", "clean"} <= targets
    listed = {}
    for line in make("help").stdout.splitlines():
        name, _, description = line.partition(" ")
        listed[name] = description.strip()
    assert set(listed) == targets
    assert all(len(d) > 10 for d in listed.values()), listed


def test_ci_calls_exactly_make_test():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert [line for line in lines if line.startswith("make")] == ["make test"]


def test_xdist_groups_take_effect_with_the_pinned_pytest(tmp_path):
    """make test relies on --dist loadgroup to build the shared tiny flow and the Kaggle-image
    kernels once: with pytest 9.2 the group marks are silently ignored (pytest-xdist#1386), so
    a grouped pair must land on one worker, which shows as the "@group" suffix on its ids."""
    import sys

    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_groups.py").write_text(
        "import pytest\n"
        "@pytest.mark.xdist_group('shared')\ndef test_a(): pass\n"
        "@pytest.mark.xdist_group('shared')\ndef test_b(): pass\n"
        "def test_c(): pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup",
                           "-v", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    grouped = re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED \S*::test_[ab]@shared", proc.stdout)
    assert len(grouped) == 2 and len(set(grouped)) == 1, \
        "pytest-xdist's loadgroup did not group the marked tests (pytest >= 9.2?):\n" + proc.stdout
