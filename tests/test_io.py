"""kit.io: atomic outputs, their permissions, the CSV reader's errors."""
from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from kit import io
from kit.errors import KitError


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_get_the_umask_not_the_temp_files_mode(tmp_path, umask, mask, expected):
    umask(mask)
    assert io.current_umask() == mask
    io.write_text(tmp_path / "a.txt", "x")
    io.write_csv(tmp_path / "b.csv", pd.DataFrame({"a": [1]}))
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.csv") == expected
    assert os.umask(mask) == mask                    # reading it did not change it


def test_umask_without_proc_is_read_and_restored(tmp_path, umask, monkeypatch):
    monkeypatch.setattr(io, "PROC_STATUS", tmp_path / "no-such-status")
    umask(0o027)
    assert io.current_umask() == 0o027
    assert os.umask(0o027) == 0o027
    io.write_json(tmp_path / "c.json", {"a": 1})
    assert mode(tmp_path / "c.json") == 0o640


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "kept.txt"
    path.write_text("old")
    os.chmod(path, 0o600)
    io.write_text(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600
    os.chmod(path, 0o664)
    io.write_text(path, "newer")
    assert mode(path) == 0o664


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_open(path) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_read_csv_names_file_and_missing_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    assert io.read_csv(tmp_path / "t.csv", ["a"])["b"].tolist() == [2]
    with pytest.raises(KitError, match=r"t.csv, row 1, field 'c': missing column"):
        io.read_csv(tmp_path / "t.csv", ["a", "c"])
    with pytest.raises(KitError, match="run this first"):
        io.read_csv(tmp_path / "none.csv", not_found="run this first")
