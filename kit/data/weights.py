"""``weights``: fetch and check the initial weight files (COCO, ImageNet ResNets) into data/weights.

``python -m kit weights coco|imagenet-r50|imagenet-r101 [--from FILE] [--url URL]`` (``make
weights WEIGHTS=...``) downloads the published file to data/weights/ with a progress bar, resumes a
cut download (HTTP Range on ``<file>.part``), checks its size and checksum against the published
ones (KNOWN) and renames it into place only then; ``--from`` copies a local file, checked the same
way. The source can be a mirror: ``--url`` or KIT_WEIGHTS_URL_<NAME> (KIT_WEIGHTS_URL_COCO,
KIT_WEIGHTS_URL_IMAGENET_R50, ...).

``init_weights_path`` is the check that ``train`` and ``submission`` run first (init=coco or
imagenet without --weights): a missing or damaged file is one KitError line naming the command
that fetches it, before any run folder, cache or model exists. In a Kaggle session
(/kaggle/working exists, the kernels enable internet) a missing file is downloaded instead, as
the kernels always did. Copies attached as Kaggle datasets (/kaggle/input/*/<file>) count too.
Loading the files is kit.mrcnn.weights' job; nothing here imports TensorFlow.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kit import paths
from kit.config import RunConfig
from kit.errors import KitError
from kit.io import atomic_open, no_space_errno, no_space_error, output_mode

WEIGHTS_DIR = paths.DATA / "weights"
KAGGLE_WORKING = Path("/kaggle/working")   # exists only in a Kaggle session: fetching allowed there
KAGGLE_INPUT = Path("/kaggle/input")       # attached datasets may hold the files
URL_ENV = "KIT_WEIGHTS_URL_"               # + NAME upper-cased, '-' -> '_': a mirror's URL
TIMEOUT_S = 60                             # per socket operation, not for the whole download
CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    """A published weight file: ``size`` in bytes and ``digest`` ("md5:<hex>" or
    "sha256:<hex>"; None: unknown, the size alone is checked). ``also``: other (size, digest)
    copies accepted under the same file name."""

    name: str
    file: str
    url: str
    size: int | None
    digest: str | None
    what: str
    also: tuple[tuple[int | None, str | None], ...] = ()


_KERAS_RESNET = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                 "{}_weights_tf_dim_ordering_tf_kernels_notop.h5")
# Sizes and checksums of the published files (no SHA-256 is published for any of them: md5 is
# what their publishers' own code checks). Sources, per file:
#  coco: 257,557,808 bytes (the release asset's Content-Length and HDF5 end-of-file address, as
#    quoted in download logs); md5 from NVIDIA TensorRT's sampleUffMaskRCNN README and
#    alibaba/ai-matrix's checksum.md5 (both md5sum the v2.0 release download).
#  imagenet-r50/-r101: md5 from keras.applications' own table (keras/src/applications/resnet.py
#    WEIGHTS_HASHES, the no-top entry, as keras.utils.get_file checks it); sizes from Keras
#    download logs (94,765,736 and 171,446,536 bytes).
#  imagenet-r50 also accepts the older Keras-2.0 file of the same name (fchollet/
#    deep-learning-models v0.2, Matterport's get_imagenet_weights): 94,653,016 bytes, md5
#    a268eb855778b3df3c7506639542a6af (the md5 Matterport's and keras_applications' resnet50.py
#    pass to get_file); its layer names are Matterport's own and load by name as they are.
KNOWN: dict[str, WeightFile] = {
    "coco": WeightFile(
        "coco", "mask_rcnn_coco.h5",
        "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
        257_557_808, "md5:e98aaff6f99e307b5e2a8a3ff741a518",
        "Matterport's MS-COCO Mask R-CNN, ResNet-101"),
    "imagenet-r50": WeightFile(
        "imagenet-r50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_RESNET.format("resnet50"), 94_765_736, "md5:4d473c1dd8becc155b73f8504c6f6626",
        "keras.applications ImageNet ResNet50, no top",
        also=((94_653_016, "md5:a268eb855778b3df3c7506639542a6af"),)),
    "imagenet-r101": WeightFile(
        "imagenet-r101", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_RESNET.format("resnet101"), 171_446_536, "md5:88cf7a10940856eca736dc7b7e228a21",
        "keras.applications ImageNet ResNet101, no top"),
}
IMAGENET = {"resnet50": "imagenet-r50", "resnet101": "imagenet-r101"}


def known(name: str) -> WeightFile:
    if name not in KNOWN:
        raise KitError(f"unknown weights {name!r}; choose from: {', '.join(KNOWN)}")
    return KNOWN[name]


def url_for(name: str) -> str:
    """Where to download ``name`` from: KIT_WEIGHTS_URL_<NAME> when set (a mirror), else the
    published URL."""
    return os.environ.get(URL_ENV + name.upper().replace("-", "_")) or known(name).url


def fetching_allowed() -> bool:
    """Only a Kaggle session fetches missing init weights by itself (its kernels have internet)."""
    return KAGGLE_WORKING.is_dir()


# -------------------------------------------------------------------------------- checking
_DIGESTS: dict[tuple, str] = {}   # (device, inode, size, mtime_ns, algorithm) -> hex digest


def _digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, computed once per process for an unchanged file (a rename keeps it)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, algorithm)
    if key not in _DIGESTS:
        digest = hashlib.new(algorithm)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def problem_with(path: Path, wf: WeightFile) -> str | None:
    """None when ``path`` is a published copy of ``wf`` (size, then checksum); else what differs."""
    size = Path(path).stat().st_size
    variants = [(wf.size, wf.digest), *wf.also]
    matching = [digest for want, digest in variants if want is None or want == size]
    if not matching:
        sizes = " or ".join(f"{want:,}" for want, _ in variants if want is not None)
        return f"size {size:,} bytes, expected {sizes}"
    digests = [d for d in matching if d]
    if not digests:
        return None
    for digest in digests:
        algorithm, want = digest.split(":", 1)
        if _digest(Path(path), algorithm) == want.lower():
            return None
    algorithm, want = digests[0].split(":", 1)
    return f"{algorithm} {_digest(Path(path), algorithm)}, expected {want}"


def describe(wf: WeightFile, path: Path) -> str:
    """What a checked file was checked against, e.g. ``257,557,808 bytes, md5 e98a...: the
    published file`` (call after problem_with found nothing wrong)."""
    size = Path(path).stat().st_size
    for want, digest in [(wf.size, wf.digest), *wf.also]:
        if digest and want in (None, size):
            algorithm, value = digest.split(":", 1)
            if _digest(Path(path), algorithm) == value.lower():
                return f"{size:,} bytes, {algorithm} {value}: the published file"
    return f"{size:,} bytes; note: no published checksum is known, only the size was checked"


def candidates(wf: WeightFile, weights_dir: Path | None = None) -> list[Path]:
    """Where a copy may be: data/weights/<file>, then attached Kaggle datasets."""
    folder = Path(weights_dir if weights_dir is not None else WEIGHTS_DIR)
    return [folder / wf.file, *sorted(KAGGLE_INPUT.glob(f"*/{wf.file}"))]


def find(name: str, weights_dir: Path | None = None, needed_by: str = "") -> Path:
    """The first checked copy of weights ``name``; else one KitError line naming the command
    that fetches it (``needed_by`` says who asks, e.g. ``init=coco``)."""
    wf = known(name)
    places = candidates(wf, weights_dir)
    rejected = []
    for place in places:
        if place.is_file():
            problem = problem_with(place, wf)
            if problem is None:
                return place
            rejected.append(f"{place} is damaged ({problem})")
    who = f"{needed_by} needs {wf.file}" if needed_by else wf.file
    fetch = f"`python -m kit weights {name}`"
    if rejected:
        raise KitError(f"{who}; {'; '.join(rejected)}: fetch it again with {fetch}"
                       f"{', or pass --weights FILE' if needed_by else ''}")
    raise KitError(f"{who}, which is not in {places[0].parent}/ or {KAGGLE_INPUT}/*/: fetch it "
                   f"with {fetch} (--from FILE checks and copies one you have)"
                   f"{', or pass --weights FILE' if needed_by else ''}")


def init_weights_path(cfg: RunConfig, weights: Path | None = None,
                      weights_dir: Path | None = None) -> Path | None:
    """The file ``cfg.init`` loads from, checked (the up-front check of train and submission):
    None for init=none; --weights (``weights``) for coco/imagenet when given; else the checked
    copy of the published file, fetched only in a Kaggle session; or the file init names."""
    if cfg.init == "none":
        return None
    if cfg.init not in ("coco", "imagenet"):
        if not Path(cfg.init).is_file():
            raise KitError(f"init={cfg.init}: no such weights file (init is coco, imagenet, "
                           "none or the path of a .h5 file)")
        return Path(cfg.init)
    if weights is not None:
        if not Path(weights).is_file():
            raise KitError("no such weights file (--weights)", path=weights)
        return Path(weights)
    if cfg.init == "coco":
        name = "coco"
    elif cfg.backbone in IMAGENET:
        name = IMAGENET[cfg.backbone]
    else:
        raise KitError(f"init=imagenet: no ImageNet weights for backbone {cfg.backbone!r}")
    try:
        return find(name, weights_dir, needed_by=f"init={cfg.init}")
    except KitError:
        if not fetching_allowed():
            raise
    return fetch(name, weights_dir=weights_dir)


# ------------------------------------------------------------------------------- fetching
def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(wf: WeightFile, url: str, dest: Path, progress: bool = True) -> Path:
    """``url`` -> ``dest`` through ``dest.part``: resumes a partial .part (HTTP Range), shows a
    progress bar, checks the result (a wrong one is deleted) and renames it into place."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(dest)
    have = part.stat().st_size if part.is_file() else 0
    if wf.size is not None and have > wf.size:
        part.unlink()
        have = 0
    expected = wf.size
    rerun = f"run `python -m kit weights {wf.name}` again to resume"
    if not (have and have == wf.size):            # a complete .part is only checked
        headers = {"User-Agent": "rsna-kit"}
        if have:
            headers["Range"] = f"bytes={have}-"
            print(f"resuming at {have:,} of {wf.size or 0:,} bytes" if wf.size else
                  f"resuming at {have:,} bytes")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=TIMEOUT_S) as response:
                if have and response.status != 206:   # the server ignored Range: start over
                    have = 0
                length = response.headers.get("Content-Length")
                if expected is None and length is not None:
                    expected = have + int(length)
                with open(part, "ab" if have else "wb") as fh, tqdm(
                        total=expected, initial=have, unit="B", unit_scale=True,
                        unit_divisor=1024, desc=wf.file, disable=not progress) as bar:
                    try:
                        for chunk in iter(lambda: response.read(CHUNK), b""):
                            fh.write(chunk)
                            bar.update(len(chunk))
                    finally:
                        fh.flush()
                        os.fsync(fh.fileno())
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have and wf.size is None:   # the .part reaches the end
                expected = have
            else:
                if exc.code == 416:
                    part.unlink()
                raise KitError(f"download failed (HTTP {exc.code} {exc.reason}); check the URL, "
                               f"or give another with --url or {URL_ENV}"
                               f"{wf.name.upper().replace('-', '_')}", path=url) from exc
        except (OSError, http.client.HTTPException) as exc:
            code = no_space_errno(exc)
            if code:          # a full disk: one line with the free space; the .part is kept
                raise no_space_error(part, code, existed=False) from None
            got = part.stat().st_size if part.is_file() else 0
            if not got:
                raise KitError(f"download failed ({exc}); no internet here? copy the file from "
                               f"elsewhere and pass it with --from FILE", path=url) from exc
            of = f" of {expected:,}" if expected else ""
            raise KitError(f"download cut at {got:,}{of} bytes ({exc}); {rerun}",
                           path=url) from exc
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise KitError(f"download cut at {got:,} of {expected:,} bytes; {rerun}", path=url)
    problem = problem_with(part, wf)
    if problem:
        part.unlink()
        raise KitError(f"{problem}: not the published {wf.file}, download deleted; run "
                       f"`python -m kit weights {wf.name}` to try again, or give another source "
                       f"with --url or --from", path=url)
    os.chmod(part, output_mode(dest))
    os.replace(part, dest)
    return dest


def copy_from(wf: WeightFile, source: Path, dest: Path) -> Path:
    """A local copy ``source`` -> ``dest`` (atomically), after the same checks as a download."""
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise KitError("no such file (--from)", path=source)
    problem = problem_with(source, wf)
    if problem:
        raise KitError(f"{problem}: not the published {wf.file}, nothing copied", path=source)
    if dest.is_file() and dest.samefile(source):
        return dest
    with open(source, "rb") as src, atomic_open(dest, "wb") as fh:
        shutil.copyfileobj(src, fh, length=CHUNK)
    return dest


def fetch(name: str, url: str | None = None, weights_dir: Path | None = None,
          progress: bool = True) -> Path:
    """A checked copy of weights ``name``: one already there, else downloaded to weights_dir."""
    wf = known(name)
    for place in candidates(wf, weights_dir):
        if place.is_file() and problem_with(place, wf) is None:
            return place
    dest = Path(weights_dir if weights_dir is not None else WEIGHTS_DIR) / wf.file
    if dest.is_file():
        print(f"weights {name}: replacing {dest} ({problem_with(dest, wf)})")
    url = url or url_for(name)
    print(f"weights {name}: downloading {url} -> {dest}")
    return download(wf, url, dest, progress=progress)


# -------------------------------------------------------------------------------- command
def add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=list(KNOWN),
                   help="coco: mask_rcnn_coco.h5 (init=coco); imagenet-r50 / imagenet-r101: "
                        "ImageNet ResNet (init=imagenet with that backbone)")
    p.add_argument("--from", dest="source", type=Path, default=None, metavar="FILE",
                   help="copy this local file instead of downloading (checked the same way)")
    p.add_argument("--url", default=None,
                   help=f"download from this URL (a mirror; default: {URL_ENV}<NAME> when set, "
                        "else the published URL)")
    p.add_argument("--dir", type=Path, default=WEIGHTS_DIR,
                   help="where the file goes (default: data/weights, where train looks)")


def run_weights(args: argparse.Namespace) -> int:
    wf = known(args.name)
    if args.source is not None:
        path = copy_from(wf, args.source, Path(args.dir) / wf.file)
        print(f"weights {args.name}: {path} ({describe(wf, path)})")
        return 0
    present = next((p for p in candidates(wf, args.dir)
                    if p.is_file() and problem_with(p, wf) is None), None)
    if present is not None:
        print(f"weights {args.name}: {present} is already there ({describe(wf, present)})")
        return 0
    path = fetch(args.name, url=args.url, weights_dir=args.dir)
    print(f"weights {args.name}: {path} ({describe(wf, path)})")
    return 0
