"""``kernels output``: download a kernel's /kaggle/working into runs/kaggle-<NAME>-<version>/.

The download goes into a ``.part`` folder that is renamed when complete, so an interrupted
download is never mistaken for a finished one. The run folder the kernel wrote (config.json,
raw_val.csv, raw_test.csv, postprocess.json, checkpoints ...) is moved to the top, next to
submission.csv, so ``score``, ``tune``, ``submit --run`` and ``report`` use it like any run.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from kit import io
from kit.errors import KitError
from kit.runs import run_order

RUN_FILES = ("raw_val.csv", "raw_test.csv", "postprocess.json", "config.json")
RECORD = "kernel.json"


def register(folder: Path) -> dict[str, str]:
    """Make a downloaded kernel output look like a run folder; returns {name: where it came from}.

    The run folder inside (a folder with config.json; one with raw_test.csv first, then the
    newest by the timestamp in its name) is moved up to the top (checkpoints and all, so ``predict``/``report`` find them where they
    expect); any run file or submission.csv still missing at the top is then copied from
    wherever it is found.
    """
    folder = Path(folder)
    registered: dict[str, str] = {}
    runs = [p.parent for p in folder.rglob("config.json") if p.parent != folder]
    if runs:
        run = max(runs, key=lambda p: ((p / "raw_test.csv").is_file(), run_order(p)))
        for entry in sorted(run.iterdir()):
            if not (folder / entry.name).exists():
                entry.rename(folder / entry.name)
                registered[entry.name] = entry.relative_to(folder).as_posix()
        while run != folder and not any(run.iterdir()):    # drop the emptied folders
            run.rmdir()
            run = run.parent
    for name in (*RUN_FILES, "submission.csv"):
        if (folder / name).is_file():
            registered.setdefault(name, name)
            continue
        found = sorted((p for p in folder.rglob(name) if p.is_file()), key=lambda p: p.as_posix())
        if found:
            shutil.copy2(found[-1], folder / name)
            registered[name] = found[-1].relative_to(folder).as_posix()
    return registered


def _version(args: argparse.Namespace) -> int | None:
    if args.version is not None:
        return args.version
    record = Path(args.build_dir) / args.name / "push.json"
    if "/" not in args.name and record.is_file():
        return json.loads(record.read_text(encoding="utf-8")).get("version")
    return None


def fetch_output(args: argparse.Namespace, ref: str) -> int:
    """Download kernel ``ref`` ("owner/slug"; ``kernels output``'s arguments say which version,
    pattern and folder), register and rename into place; prints what is there and what to run next."""
    from kit.kaggle import api

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
    found = [name for name in (*RUN_FILES, "submission.csv") if name in registered]
    print(f"{len(files)} files of {ref} in {dest}; run files: {', '.join(found) or 'none'}")
    if "submission.csv" in registered:
        print(f"next: python -m kit score --submission {dest / 'submission.csv'}")
    if "raw_test.csv" in registered:
        print(f"      python -m kit submit --run {dest}")
    return 0
