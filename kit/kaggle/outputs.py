"""``kernels output``: download a kernel's /kaggle/working into runs/kaggle-<NAME>-<version>/.

The download goes into a ``.part`` folder that is renamed when complete, so an interrupted
download is never mistaken for a finished one. The kernel's run files (raw_val.csv,
raw_test.csv, postprocess.json, config.json) and submission.csv are copied to the top of the
folder, so ``score``, ``tune``, ``submit --run`` and ``report`` use it like any run folder.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from kit import io
from kit.errors import KitError

RUN_FILES = ("raw_val.csv", "raw_test.csv", "postprocess.json", "config.json")
RECORD = "kernel.json"


def _newest(found: list[Path]) -> Path | None:
    """The shallowest, then last-named, of several candidates (run names end in a timestamp)."""
    if not found:
        return None
    return sorted(found, key=lambda p: (-len(p.parts), p.as_posix()))[-1]


def register(folder: Path) -> dict[str, str]:
    """Copy the run files and submission.csv found in ``folder`` to its top; what came from where."""
    folder = Path(folder)
    registered = {}
    for name in (*RUN_FILES, "submission.csv"):
        if (folder / name).is_file():
            registered[name] = name
            continue
        source = _newest([p for p in folder.rglob(name) if p.is_file()])
        if source is not None:
            shutil.copy2(source, folder / name)
            registered[name] = source.relative_to(folder).as_posix()
    return registered


def _version(args: argparse.Namespace) -> int | None:
    if args.version is not None:
        return args.version
    record = Path(args.build_dir) / args.name / "push.json"
    if "/" not in args.name and record.is_file():
        return json.loads(record.read_text(encoding="utf-8")).get("version")
    return None


def fetch_output(args: argparse.Namespace) -> int:
    """Download, register and rename into place; prints what is there and what to run next."""
    from kit.kaggle import api
    from kit.kaggle.kernels import kernel_ref

    ref = kernel_ref(args.name, args.owner, args.build_dir)
    version = _version(args)
    label = args.name.replace("/", "-")
    dest = Path(args.runs_dir) / f"kaggle-{label}-{version if version is not None else 'latest'}"
    if dest.exists() and not args.force:
        raise KitError("already downloaded; pass --force to download again (it is replaced)",
                       path=dest)
    part = dest.with_name(f".{dest.name}.part")
    if part.exists():
        shutil.rmtree(part)
    files = api.kernel_output(ref if version is None else f"{ref}/{version}", part, args.pattern)
    registered = register(part)
    io.write_json(part / RECORD, {"ref": ref, "version": version, "registered": registered,
                                  "files": sorted(p.relative_to(part).as_posix() for p in files)})
    if dest.exists():
        shutil.rmtree(dest)
    part.rename(dest)
    print(f"{len(files)} files of {ref} in {dest}; run files: {', '.join(registered) or 'none'}")
    if "submission.csv" in registered:
        print(f"next: python -m kit score --submission {dest / 'submission.csv'}")
    if "raw_test.csv" in registered:
        print(f"      python -m kit submit --run {dest}")
    return 0
