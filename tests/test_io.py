"""kit.io: atomic outputs, their permissions, a full disk, the CSV reader's errors."""
from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import namedtuple

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


@pytest.fixture
def free_12mb(monkeypatch):
    """shutil.disk_usage reports 12 MB free."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 12e6, 12e6))


def _raise(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def test_a_full_disk_at_the_rename_keeps_the_old_table(tmp_path, monkeypatch, free_12mb):
    path = tmp_path / "raw_val.csv"
    path.write_text("old\n")
    monkeypatch.setattr(os, "replace", _raise(errno.ENOSPC))
    with pytest.raises(KitError) as err:
        io.write_csv(path, pd.DataFrame({"a": [1, 2]}))
    assert str(err.value) == (f"{path}: no space left on the device (12 MB free): free some "
                              "space and rerun; the previous file is intact")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["raw_val.csv"]
    monkeypatch.undo()                                  # space freed: the rerun writes it
    io.write_csv(path, pd.DataFrame({"a": [1, 2]}))
    assert path.read_text() == "a\n1\n2\n"


def test_a_full_disk_while_writing_is_found_through_the_write(tmp_path, monkeypatch, free_12mb):
    path = tmp_path / "submission.csv"
    path.write_text("old")
    write = io._RecordingFileIO.write
    monkeypatch.setattr(io._RecordingFileIO, "write", _raise(errno.ENOSPC))
    with pytest.raises(KitError, match="no space left on the device .12 MB free.*intact"):
        io.write_text(path, "x" * 100_000)
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(io._RecordingFileIO, "write", write)
    io.write_text(path, "new")
    assert path.read_text() == "new"


def test_a_full_disk_before_anything_is_written(tmp_path, monkeypatch, free_12mb):
    monkeypatch.setattr(io.tempfile, "mkstemp", _raise(errno.ENOSPC))
    with pytest.raises(KitError, match=r"new.json: no space left .* rerun; nothing was written$"):
        io.write_json(tmp_path / "new.json", {})
    monkeypatch.setattr(io.tempfile, "mkstemp", _raise(errno.EACCES))
    with pytest.raises(PermissionError):               # other errors pass through unchanged
        io.write_json(tmp_path / "new.json", {})


def test_a_quota_and_the_fsync(tmp_path, monkeypatch, free_12mb):
    monkeypatch.setattr(os, "fsync", _raise(errno.EDQUOT))
    with pytest.raises(KitError, match="q.txt: disk quota exceeded .12 MB free."):
        io.write_text(tmp_path / "q.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_format_bytes():
    assert [io.format_bytes(n) for n in (0, 999, 12_000, 999_999, 12e6, 3.4e9, 2.5e12)] == [
        "0 bytes", "999 bytes", "12 kB", "1 MB", "12 MB", "3.4 GB", "2.5 TB"]
