"""One self-contained kernel script: the kit as a zip (base64 constant) + a loader + entry script.

``kaggle kernels push`` uploads only the text of the code file, so everything the kernel needs
from this repository travels inside it. The zip holds kit/ only (no tests, no data), is
deterministic (sorted members, fixed timestamps) and its sha256 is written in a header comment
and checked by the loader before anything is unpacked.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import subprocess
import zipfile
from pathlib import Path

from kit import paths
from kit.errors import KitError

MAX_SCRIPT_BYTES = 1_000_000
BUNDLED_SUFFIXES = {".py", ".json", ".csv", ".txt"}
CREDENTIAL_NAMES = {"kaggle.json", "access_token", "access_token.txt", "credentials.json", ".env"}
SHA_LINE = "# kit bundle sha256: "

LOADER = '''\
import base64 as _b64, hashlib as _hashlib, io as _io, os as _os, sys as _sys
import tempfile as _tempfile, zipfile as _zipfile


def _unpack_kit():
    """Check the embedded kit zip, unpack it once under $KIT_TMP or /tmp, put it on sys.path."""
    data = _b64.b64decode(KIT_BUNDLE)
    if _hashlib.sha256(data).hexdigest() != KIT_BUNDLE_SHA256:
        raise SystemExit("the embedded kit bundle is corrupt: rebuild with python -m kit kernels build")
    parent = _os.environ.get("KIT_TMP") or _tempfile.gettempdir()
    _os.makedirs(parent, exist_ok=True)
    root = _os.path.join(parent, "rsna-kit-" + KIT_BUNDLE_SHA256[:16])
    if not _os.path.isfile(_os.path.join(root, ".complete")):
        tmp = _tempfile.mkdtemp(prefix=".rsna-kit-", dir=parent)
        _zipfile.ZipFile(_io.BytesIO(data)).extractall(tmp)
        open(_os.path.join(tmp, ".complete"), "w").close()
        try:
            _os.rename(tmp, root)
        except OSError:   # another process unpacked the same bundle first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    _sys.path.insert(0, root)
    _os.environ["PYTHONPATH"] = _os.pathsep.join(p for p in (root, _os.environ.get("PYTHONPATH")) if p)
    _os.environ["KIT_BUNDLE_SHA256"] = KIT_BUNDLE_SHA256


_unpack_kit()
'''


def _bundled_files(kit_dir: Path) -> list[Path]:
    files = []
    for path in sorted(kit_dir.rglob("*")):
        rel = path.relative_to(kit_dir)
        if (not path.is_file() or path.suffix not in BUNDLED_SUFFIXES
                or any(part.startswith(".") or part == "__pycache__" for part in rel.parts)):
            continue
        if path.name in CREDENTIAL_NAMES:
            raise KitError("looks like a credentials file inside kit/: move it out, it would be "
                           "embedded in the kernel", path=path)
        files.append(path)
    return files


def kit_zip(kit_dir: Path = paths.ROOT / "kit") -> bytes:
    """Deterministic zip of kit/ (members ``kit/...``; same bytes for the same sources)."""
    kit_dir = Path(kit_dir)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in _bundled_files(kit_dir):
            info = zipfile.ZipInfo(f"kit/{path.relative_to(kit_dir).as_posix()}",
                                   date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def source_version(root: Path = paths.ROOT) -> str | None:
    """``<git short sha>[-dirty]`` of the checkout, or None outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "kit"],
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty.strip() else "")


def render_script(name: str, entry: str, bundle: bytes, source: str | None = None,
                  env: dict[str, str] | None = None) -> str:
    """The kernel script text: header (with the bundle's sha256), bundle, loader, the build-time
    settings ``env`` (environment defaults such as KIT_PRESET; the session's own win), entry."""
    sha = hashlib.sha256(bundle).hexdigest()
    n_files = len(zipfile.ZipFile(io.BytesIO(bundle)).namelist())
    b64 = base64.encodebytes(bundle).decode("ascii")
    header = (f"# rsna-kit Kaggle kernel {name!r}: built by `python -m kit kernels build`; "
              "do not edit, rebuild.\n"
              f"{SHA_LINE}{sha}\n"
              f"# kit bundle: {n_files} files, {len(bundle)} bytes zipped"
              f"{', source ' + source if source else ''}\n")
    settings = ""
    if env:
        settings = ("# ---- build-time settings (kernels build --preset/--set/--time-budget) ----\n"
                    + "".join(f"_os.environ.setdefault({k!r}, {v!r})\n"
                              for k, v in sorted(env.items())) + "\n")
    return (f"{header}KIT_BUNDLE_SHA256 = {sha!r}\nKIT_BUNDLE = \"\"\"\n{b64}\"\"\"\n\n"
            f"{LOADER}\n{settings}# ---- kernels/{name}/ entry script ----\n{entry}")


def header_sha(script: str) -> str:
    """The sha256 written in a built script's header."""
    match = re.search(rf"^{re.escape(SHA_LINE)}([0-9a-f]{{64}})$", script, re.MULTILINE)
    if not match:
        raise KitError("no kit bundle sha256 header: not a built kernel script")
    return match.group(1)


def holds_secret(script: str, secrets: list[str]) -> bool:
    """Whether any secret appears in the script text or inside any file of its embedded zip."""
    if not secrets:
        return False
    texts = [script]
    with zipfile.ZipFile(io.BytesIO(decode_bundle(script))) as zf:
        texts += [zf.read(name).decode("utf-8", "replace") for name in zf.namelist()]
    return any(secret in text for secret in secrets for text in texts)


def decode_bundle(script: str) -> bytes:
    """The zip bytes embedded in a built script."""
    match = re.search(r'^KIT_BUNDLE = """\n(.*?)"""$', script, re.MULTILINE | re.DOTALL)
    if not match:
        raise KitError("no KIT_BUNDLE constant: not a built kernel script")
    return base64.b64decode(match.group(1))
