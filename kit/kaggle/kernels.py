"""Command ``kernels``: build / push / status / output of the Kaggle kernels in kernels/<name>/.

- ``build [NAME ...]``: kernels/build/<NAME>/ = kernel-metadata.json (owner filled in) + ONE
  script embedding the kit (see kit.kaggle.bundle); no name builds them all.
- ``push [NAME]``: build, then push through the client's Python API; an error answer fails.
- ``status NAME [--wait]``: QUEUED / RUNNING / COMPLETE / ERROR (exit 1 for ERROR / cancelled).
- ``output NAME``: download into runs/kaggle-<NAME>-<version>/ laid out like a run folder.
NAME is a folder under kernels/ (full, train, infer) or, for status/output, "owner/slug".
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from kit import io, paths
from kit.errors import KitError
from kit.kaggle import bundle
from kit.kaggle.creds import find_credentials, secret_values

# the environment a built kernel script reads (kit.flow.kernel): preset, --set overrides, budget
PRESET_ENV, SET_ENV, BUDGET_ENV = "KIT_PRESET", "KIT_SET", "KIT_TIME_BUDGET"
# Kaggle stops a GPU session at 9 h (12 h is also cited): the flow plans to end by 8 h 15 m,
# leaving 45 min for Kaggle's start-up, saving /kaggle/working and estimation error
DEFAULT_BUDGET = "8h15m"
KERNELS_DIR = paths.ROOT / "kernels"
BUILD_DIR = KERNELS_DIR / "build"
REQUIRED = ("id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
            "enable_internet", "machine_shape", "competition_sources")
PUSH_RECORD = "push.json"
RUNNING = {"QUEUED", "RUNNING", "NEW_SCRIPT", "CANCEL_REQUESTED"}
FAILED = {"ERROR", "CANCEL_ACKNOWLEDGED"}


def kernel_names(kernels_dir: Path = KERNELS_DIR) -> list[str]:
    """The kernels that have a template: kernels/<name>/kernel-metadata.json."""
    return sorted(p.parent.name for p in Path(kernels_dir).glob("*/kernel-metadata.json")
                  if p.parent.name != "build")


def slugify(title: str) -> str:
    """Kaggle's slug of a title: lower case, runs of other characters -> one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _template(name: str, kernels_dir: Path) -> tuple[dict, Path]:
    folder = Path(kernels_dir) / name
    meta_path = folder / "kernel-metadata.json"
    if not meta_path.is_file():
        raise KitError(f"unknown kernel {name!r}; choose from: {', '.join(kernel_names(kernels_dir))}",
                       path=meta_path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise KitError(f"not valid JSON ({exc})", path=meta_path) from None
    for field in REQUIRED:
        if field not in meta:
            raise KitError("missing (set it explicitly)", path=meta_path, field=field)
    return meta, folder


def render_metadata(meta: dict, owner: str, datasets: list[str], meta_path: Path,
                    suffix: str | None = None, continue_: bool = False) -> dict:
    """The template with ``{owner}`` filled in and extra dataset sources; checked like Kaggle does.

    ``suffix`` makes a separate kernel (id ``owner/<slug>-<suffix>``, title ``<title> <suffix>``),
    e.g. one per fold; ``continue_`` attaches the kernel's own previous output (kernel_sources),
    so the train kernel resumes its last checkpoint."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", owner):
        raise KitError(f"owner {owner!r} is not a Kaggle user name", field="--owner")
    out = json.loads(json.dumps(meta).replace("{owner}", owner))
    if suffix:
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", suffix):
            raise KitError(f"suffix {suffix!r}: use lower-case letters, digits and '-'",
                           field="--suffix")
        out["id"], out["title"] = f"{out['id']}-{suffix}", f"{out['title']} {suffix}"
    out["dataset_sources"] = list(out.get("dataset_sources", [])) + list(datasets)
    if continue_:
        out["kernel_sources"] = list(dict.fromkeys([*out.get("kernel_sources", []), out["id"]]))
    ref_owner, _, slug = out["id"].partition("/")
    if ref_owner != owner or "/" in slug or len(slug) < 5:
        raise KitError("must be '{owner}/<slug of 5+ characters>' without a version",
                       path=meta_path, field="id")
    if len(out["title"]) < 5 or slugify(out["title"]) != slug:
        raise KitError(f"title must have 5+ characters and slugify to {slug!r}",
                       path=meta_path, field="title")
    return out


def resolve_owner(owner: str | None) -> str:
    """--owner, else the user name of the local credentials."""
    if owner:
        return owner
    creds = find_credentials()
    if creds is not None and creds.username:
        return creds.username
    raise KitError("kernel owner unknown: pass --owner YOUR_KAGGLE_NAME (or set KAGGLE_USERNAME)")


def resolve_owner_online() -> str:
    """Owner from local credentials, else from the server (access tokens carry no user name)."""
    from kit.kaggle import api

    creds = find_credentials()
    if creds is not None and creds.username:
        return creds.username
    name = api.username(api.client())
    if not name:
        raise KitError("kernel owner unknown: pass --owner YOUR_KAGGLE_NAME")
    return name


def build_kernel(name: str, owner: str, *, datasets: list[str] = (),
                 kernels_dir: Path = KERNELS_DIR, out_dir: Path = BUILD_DIR,
                 kit_dir: Path = paths.ROOT / "kit", preset: str | None = None,
                 overrides: list[str] = (), time_budget: str | None = None,
                 suffix: str | None = None, continue_: bool = False) -> Path:
    """Render kernels/<name>/ into ``out_dir/<name>[-<suffix>]/``; returns the built script's path.

    ``preset``, ``overrides`` (--set KEY=VALUE) and ``time_budget`` travel inside the script as
    KIT_PRESET / KIT_SET / KIT_TIME_BUDGET defaults. Refuses (writing nothing) when the script
    would hold a credential value or pass 1 MB."""
    meta, folder = _template(name, kernels_dir)
    meta = render_metadata(meta, owner, list(datasets), folder / "kernel-metadata.json",
                           suffix=suffix, continue_=continue_)
    entry_path = folder / meta["code_file"]
    if not entry_path.is_file():
        raise KitError("entry script not found", path=entry_path)
    env = _build_env(preset, list(overrides), time_budget)
    script = bundle.render_script(name, entry_path.read_text(encoding="utf-8"),
                                  bundle.kit_zip(kit_dir), bundle.source_version(), env=env)
    if bundle.holds_secret(script, secret_values()):
        raise KitError("the built script contains a credential: refusing to write it",
                       path=out_dir / name)
    size = len(script.encode("utf-8"))
    if size > bundle.MAX_SCRIPT_BYTES:
        raise KitError(f"built script is {size} bytes, over {bundle.MAX_SCRIPT_BYTES}: keep large "
                       "files out of kit/", path=entry_path)
    target = Path(out_dir) / (f"{name}-{suffix}" if suffix else name)
    io.write_text(target / meta["code_file"], script)
    io.write_json(target / "kernel-metadata.json", meta)
    print(f"built {target / meta['code_file']} ({size / 1024:.0f} KiB) for {meta['id']}")
    return target / meta["code_file"]


def _build_env(preset: str | None, overrides: list[str], time_budget: str | None) -> dict:
    """Environment defaults baked into a built script (checked here, not on Kaggle)."""
    from kit.config import get_preset

    env = {}
    if preset or overrides:
        get_preset(preset or "kaggle", overrides)          # a bad preset/--set fails now
    if preset:
        env[PRESET_ENV] = preset
    if overrides:
        env[SET_ENV] = json.dumps(overrides)
    if time_budget:
        from kit.budget import parse_duration

        parse_duration(time_budget)
        env[BUDGET_ENV] = time_budget
    return env


def kernel_ref(name: str, owner: str | None, out_dir: Path = BUILD_DIR,
               kernels_dir: Path = KERNELS_DIR) -> str:
    """"owner/slug" of a kernel: NAME as given when it has a '/', else the id of the last build
    (unless ``owner`` is given), else the template's with the owner filled in."""
    if "/" in name:
        return name
    built = Path(out_dir) / name / "kernel-metadata.json"
    if built.is_file() and not owner:
        return json.loads(built.read_text(encoding="utf-8"))["id"]
    meta, _ = _template(name, kernels_dir)
    return meta["id"].replace("{owner}", owner or resolve_owner_online())


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", default=None,
                   help="Kaggle user that owns the kernels (default: from the credentials)")
    p.add_argument("--build-dir", type=Path, default=BUILD_DIR, help="default: kernels/build")


def _add_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", action="append", default=[], metavar="OWNER/SLUG",
                   help="extra dataset_sources (e.g. one holding mask_rcnn_coco.h5); repeatable")
    p.add_argument("--preset", default=None, help="preset the kernel trains (default: kaggle)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides baked into the kernel, e.g. --set folds=5 --set fold=2")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help=f"the kernel's budget (default {DEFAULT_BUDGET}: a 9 h session "
                        "with margin)")
    p.add_argument("--suffix", default=None,
                   help="a separate kernel <slug>-<suffix> (e.g. fold2), so several run at once")
    p.add_argument("--continue", dest="continue_", action="store_true",
                   help="attach the kernel's own previous output: the train kernel resumes "
                        "its last checkpoint (a schedule longer than one session)")


def add_kernels_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("build", help="render kernels/build/<NAME>/ (all kernels when no NAME)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="kernel name(s) under kernels/ (default: all of them)")
    _add_build(p)
    _add_common(p)
    p = sub.add_parser("push", help="build and push NAME (default: full)")
    p.add_argument("name", nargs="?", default="full", metavar="NAME",
                   help="kernel name under kernels/ (default: full)")
    _add_build(p)
    _add_common(p)
    p = sub.add_parser("status", help="status of NAME on Kaggle")
    p.add_argument("name", metavar="NAME", help="kernel name under kernels/ (e.g. full)")
    p.add_argument("--wait", action="store_true", help="poll until it stops running")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=13 * 3600.0, help="give up after (seconds)")
    _add_common(p)
    p = sub.add_parser("output", help="download NAME's outputs into runs/kaggle-<NAME>-<version>/")
    p.add_argument("name", metavar="NAME", help="kernel name under kernels/ (e.g. full)")
    p.add_argument("--version", type=int, default=None,
                   help="kernel version (default: the last one pushed from here, else latest)")
    p.add_argument("--pattern", default=None, help="only output files whose name matches (regex)")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the run folders (default: runs/)")
    p.add_argument("--force", action="store_true", help="replace an existing download")
    _add_common(p)


def _build_options(args: argparse.Namespace) -> dict:
    return dict(datasets=args.dataset, preset=args.preset, overrides=args.set,
                time_budget=args.time_budget, suffix=args.suffix, continue_=args.continue_)


def _push(args: argparse.Namespace) -> int:
    from kit.kaggle import api

    owner = args.owner or resolve_owner_online()
    script = build_kernel(args.name, owner, out_dir=args.build_dir, **_build_options(args))
    result = api.push_kernel(script.parent)
    record = {"ref": result.ref, "url": result.url, "version": result.version,
              "bundle_sha256": bundle.header_sha(script.read_text(encoding="utf-8")),
              "pushed_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    io.write_json(script.parent / PUSH_RECORD, record)
    ref = json.loads((script.parent / "kernel-metadata.json").read_text(encoding="utf-8"))["id"]
    print(f"pushed {ref} version {result.version}: {result.url}")
    print(f"next: python -m kit kernels status {script.parent.name} --wait")
    return 0


def _status(args: argparse.Namespace) -> int:
    from kit.kaggle import api

    ref = kernel_ref(args.name, args.owner, args.build_dir)
    deadline = time.monotonic() + args.timeout
    while True:
        status, message = api.kernel_status(ref)
        print(f"{ref}: {status}" + (f" ({message})" if message else ""), flush=True)
        if status in FAILED:
            return 1
        if not args.wait or status not in RUNNING:
            return 0
        if time.monotonic() + args.interval > deadline:
            raise KitError(f"{ref} still {status} after {args.timeout:.0f} s; rerun to keep waiting")
        time.sleep(args.interval)


def run_kernels(args: argparse.Namespace) -> int:
    if args.action == "build":
        owner = resolve_owner(args.owner)
        for name in args.names or kernel_names():
            build_kernel(name, owner, out_dir=args.build_dir, **_build_options(args))
        return 0
    if args.action == "push":
        return _push(args)
    if args.action == "status":
        return _status(args)
    from kit.kaggle.outputs import fetch_output

    return fetch_output(args, kernel_ref(args.name, args.owner, args.build_dir))
