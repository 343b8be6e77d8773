"""Safe unzip of the (several GB) competition archive.

A zip is only trusted once its central directory reads back and every member's data lies
inside the file (a truncated download fails here, not halfway through unpacking). Members
with absolute paths, drive letters, ``..`` components or symlink modes are refused before
anything is written. Members are unpacked into a temp folder beside the target (CRC checked
as they stream) and the folder is renamed into place only when all of them are out, so the
target is either absent or complete.
"""
from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from kit.errors import KitError

DISK_MARGIN = 200 * 1024 ** 2      # bytes kept free on top of what a step needs
CHUNK = 1024 ** 2


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_free_disk(folder: Path, needed: int, what: str) -> None:
    """Raise ``KitError`` unless the filesystem of ``folder`` has ``needed`` + margin bytes free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + DISK_MARGIN:
        raise KitError(f"{what} needs {_gb(needed + DISK_MARGIN)} free but only {_gb(free)} is "
                       "free there; free some space (or point --out elsewhere) and rerun",
                       path=probe)


def verify_zip(path: Path) -> list[zipfile.ZipInfo]:
    """The members of a complete zip; ``KitError`` for a truncated or corrupt one.

    Checks the central directory (written last, so a cut download has none) and that each
    member's local header + compressed data end inside the file. CRCs are checked on unpack.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise KitError(f"not a complete zip ({exc}); delete it and rerun to download again",
                       path=path) from None
    for info in infos:
        # 30-byte local header + name + extra field (bounded by 64 KiB) + data
        if info.header_offset + 30 + info.compress_size > size:
            raise KitError(f"truncated: member {info.filename!r} runs past the end of the file; "
                           "delete it and rerun to download again", path=path)
    return infos


def check_members(infos: list[zipfile.ZipInfo], zip_path: Path) -> None:
    """Refuse members that would land outside the target (zip-slip) or are links."""
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if (name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
                or ".." in parts or not parts):
            raise KitError(f"refusing member {name!r}: its path leaves the target folder "
                           "(absolute or '..'); this archive is not the competition data",
                           path=zip_path)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise KitError(f"refusing member {name!r}: it is a symbolic link", path=zip_path)


def safe_unzip(zip_path: Path, target: Path, *, progress: bool = True) -> int:
    """Unpack ``zip_path`` into ``target`` (absent or empty); returns the number of files.

    All checks come first (complete zip, member paths, free disk); the members go into
    ``.<target>.unzip-tmp`` beside the target, which is renamed to ``target`` at the end.
    """
    zip_path, target = Path(zip_path), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise KitError("target folder exists and is not empty; remove it (or choose another "
                       "--out) and rerun", path=target)
    infos = verify_zip(zip_path)
    check_members(infos, zip_path)
    files = [i for i in infos if not i.is_dir()]
    total = sum(i.file_size for i in files)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.unzip-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)                     # leftover of an interrupted unzip
    check_free_disk(target.parent, total, f"unpacking {zip_path.name}")
    tmp.mkdir()
    try:
        with zipfile.ZipFile(zip_path) as zf, tqdm(total=total, unit="B", unit_scale=True,
                                                   desc=f"unzip {zip_path.name}",
                                                   disable=not progress) as bar:
            for info in files:
                out = tmp.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                        bar.update(len(chunk))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KitError(f"unpacking failed ({exc}); delete the zip and rerun to download again",
                       path=zip_path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()                         # empty (checked above)
    tmp.rename(target)
    return len(files)
