"""Atomic file output: write to a temp file in the same folder, then rename over the target.

A reader never sees a half-written file, and a killed process leaves the old file (or none).
The file gets the permissions a plain ``open(path, "w")`` would give: those of the file it
replaces, else ``0o666 & ~umask`` (not the temp file's private 0o600).
A full disk (ENOSPC, or a quota: EDQUOT) while writing is one ``KitError`` line naming the file
and the free space; the temp file is removed and the previous file is left as it was, so a
rerun after freeing space starts again from there.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator


PROC_STATUS = Path("/proc/self/status")    # Linux >= 4.7 shows the umask here ("Umask:\t0022")
_UMASK_LOCK = threading.Lock()
NO_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (/proc on Linux); else
    set and restored at once under a lock (os.umask can only be read by setting it)."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def output_mode(path: Path) -> int:
    """Permission bits for a new version of ``path``: its current ones, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


class _RecordingFileIO(io.FileIO):
    """A FileIO that remembers the first OSError its ``write`` raised: h5py (checkpoints) turns
    it into an OSError without errno, so the errno is read back from here."""

    error: OSError | None = None

    def write(self, data: Any) -> int | None:
        try:
            return super().write(data)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            raise


def _open_tmp(tmp: str, mode: str, kwargs: dict) -> tuple[IO, _RecordingFileIO | None]:
    """The temp file opened as ``open(tmp, mode, **kwargs)`` would, over a recording FileIO
    for the plain modes ("w", "wb")."""
    if mode not in ("w", "wb") or set(kwargs) - {"encoding", "errors", "newline"} or (
            mode == "wb" and kwargs):
        return open(tmp, mode, **kwargs), None
    raw = _RecordingFileIO(tmp, "w")
    fh: IO = io.BufferedWriter(raw)
    if mode == "w":
        fh = io.TextIOWrapper(fh, **kwargs)
        fh.mode = "w"        # as open() sets it (pandas looks at it)
    return fh, raw


def format_bytes(n: float) -> str:
    """A size for people: 512 bytes, 12 kB, 12 MB, 3.4 GB, 1.2 TB (powers of 1000)."""
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit, scale, digits in (("kB", 1e3, 0), ("MB", 1e6, 0), ("GB", 1e9, 1)):
        if n < scale * 999.5:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n / 1e12:.1f} TB"


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem of ``folder`` (its nearest existing parent); None if unknown."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def no_space_errno(exc: BaseException, recorded: OSError | None = None) -> int | None:
    """ENOSPC / EDQUOT when ``exc`` (or its cause/context, or ``recorded``) is a full disk."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc, recorded]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return e.errno
        todo += [e.__cause__, e.__context__]
    return None


def no_space_error(path: str | os.PathLike, code: int, existed: bool) -> "Exception":
    """The one-line KitError of a full disk while writing ``path``."""
    from kit.errors import KitError

    free = free_bytes(Path(path).parent)
    where = f"{format_bytes(free)} free" if free is not None else "free space unknown"
    kept = "the previous file is intact" if existed else "nothing was written"
    return KitError(f"{NO_SPACE[code]} ({where}): free some space and rerun; {kept}", path=path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, fsync: bool = True,
                **kwargs: Any) -> Iterator[IO]:
    """Open a temp file next to ``path``; on clean exit fsync (unless ``fsync=False``), give it
    :func:`output_mode` and rename it to ``path``. Any error removes the temp file; a full disk
    becomes :func:`no_space_error` (one KitError line)."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        code = no_space_errno(exc)
        if code:
            raise no_space_error(path, code, existed) from None
        raise
    os.close(fd)
    raw = None
    try:
        fh, raw = _open_tmp(tmp, mode, kwargs)
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, output_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        # a write that failed on a full disk explains a later error (h5py's errno-less one)
        recorded = raw.error if raw is not None and isinstance(exc, Exception) else None
        code = no_space_errno(exc, recorded)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if code:
            raise no_space_error(path, code, existed) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, df: "Any", **kwargs: Any) -> None:
    """Write a pandas DataFrame atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        df.to_csv(fh, **kwargs)


def save_figure(path: str | os.PathLike, fig: "Any", **kwargs: Any) -> None:
    """Save a matplotlib figure atomically as PNG and close it."""
    kwargs.setdefault("dpi", 100)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", **kwargs)
    import matplotlib.pyplot as plt

    plt.close(fig)


def read_csv(path: str | os.PathLike, columns: "tuple[str, ...] | list[str]" = (), *,
             not_found: str = "file not found", **kwargs: Any) -> "Any":
    """A CSV as a pandas DataFrame, or a one-line KitError naming the file (and row/field).

    ``not_found`` says what to run when the file is missing; every name in ``columns`` must be
    in the header (row 1). Extra keyword arguments go to ``pandas.read_csv``.
    """
    import pandas as pd

    from kit.errors import KitError

    path = Path(path)
    if not path.is_file():
        raise KitError(not_found, path=path)
    try:
        df = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise KitError(f"not a readable CSV ({str(exc).splitlines()[0]})", path=path) from None
    for column in columns:
        if column not in df.columns:
            raise KitError(f"missing column; the header must contain {','.join(columns)}",
                           path=path, row=1, field=column)
    return df
