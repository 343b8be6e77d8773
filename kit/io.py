"""Atomic file output: write to a temp file in the same folder, then rename over the target.

A reader never sees a half-written file, and a killed process leaves the old file (or none).
The file gets the permissions a plain ``open(path, "w")`` would give: those of the file it
replaces, else ``0o666 & ~umask`` (not the temp file's private 0o600).
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator


PROC_STATUS = Path("/proc/self/status")    # Linux >= 4.7 shows the umask here ("Umask:\t0022")
_UMASK_LOCK = threading.Lock()


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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file next to ``path``; on clean exit fsync, give it :func:`output_mode` and
    rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, output_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
