import os
import time

import pytest

from kit.errors import KitError
from kit.runs import new_run_dir, resolve_run


def test_new_run_dirs_are_unique_and_latest_resolves(tmp_path):
    a = new_run_dir("demo", tmp_path)
    b = new_run_dir("demo", tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    old = time.time() - 100
    os.utime(a, (old, old))
    assert resolve_run("latest", tmp_path) == b
    assert resolve_run(a.name, tmp_path) == a
    assert resolve_run(str(a), tmp_path) == a


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(KitError, match="no run folders"):
        resolve_run("latest", tmp_path)
    with pytest.raises(KitError, match="not found"):
        resolve_run("nope", tmp_path)
