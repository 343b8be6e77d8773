"""Command ``data``: download the competition zip from Kaggle and unpack it safely into data/rsna.

Resume-safe: the client downloads into ``<download-dir>/<slug>.zip.part/`` (and resumes a
partial file there); only a zip that verifies as complete is renamed to ``<slug>.zip``.
A rerun reuses a verified zip, and does nothing when the data are already unpacked.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from kit import paths
from kit.errors import KitError
from kit.kaggle.creds import require_credentials
from kit.kaggle.unzip import check_free_disk, safe_unzip, verify_zip

ZIP_BYTES_ESTIMATE = 4_000_000_000   # the stage-2 zip is about 3.9 GB; unpacked about the same


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=paths.RSNA_DIR,
                        help="where the data set is unpacked (default: %(default)s)")
    parser.add_argument("--download-dir", type=Path, default=paths.DATA,
                        help="where the zip is downloaded (default: %(default)s)")
    parser.add_argument("--zip", type=Path, default=None,
                        help="unpack this already downloaded zip instead of downloading")
    parser.add_argument("--keep-zip", action="store_true",
                        help="keep the zip after a successful unpack (default: delete it)")


def fetch_zip(download_dir: Path) -> Path:
    """The verified competition zip in ``download_dir``, downloading it when needed."""
    from kit.kaggle import api

    final = Path(download_dir) / f"{paths.COMPETITION}.zip"
    if final.is_file():
        verify_zip(final)
        print(f"using the already downloaded {final}")
        return final
    require_credentials()            # before anything is created on disk
    part = final.with_name(final.name + ".part")
    part.mkdir(parents=True, exist_ok=True)
    if not any(part.iterdir()):
        check_free_disk(part, 2 * ZIP_BYTES_ESTIMATE, "downloading and unpacking the data")
    zip_path = api.download_competition(part)
    try:
        verify_zip(zip_path)
    except KitError as exc:      # the client finished but the bytes are bad: start over next time
        zip_path.unlink()
        raise KitError(f"{exc} (the bad download was deleted)") from None
    zip_path.rename(final)
    shutil.rmtree(part)
    return final


def print_summary(data_dir: Path) -> None:
    """The label summary of an unpacked data set (kit.data.labels)."""
    from kit.data import labels

    labels_df = labels.read_labels(data_dir / paths.TRAIN_LABELS)
    classes_path = data_dir / paths.CLASS_INFO
    classes_df = labels.read_class_info(classes_path) if classes_path.is_file() else None
    summary = labels.summarize(labels_df, classes_df)
    print(f"data in {data_dir}:")
    for key, value in summary.items():
        print(f"  {key:<16} {value}")


def run_data(args: argparse.Namespace) -> int:
    out: Path = args.out
    if (out / paths.TRAIN_LABELS).is_file():
        print(f"{out} already holds the data ({paths.TRAIN_LABELS} found); delete it to download again")
        print_summary(out)
        return 0
    if out.exists() and any(out.iterdir()):
        raise KitError(f"exists but has no {paths.TRAIN_LABELS}; remove it (or choose another "
                       "--out) and rerun", path=out)
    if args.zip is not None:
        if not args.zip.is_file():
            raise KitError("zip not found", path=args.zip)
        zip_path = args.zip
    else:
        zip_path = fetch_zip(args.download_dir)
    n = safe_unzip(zip_path, out)
    print(f"unpacked {n} files from {zip_path} into {out}")
    if not (out / paths.TRAIN_LABELS).is_file():
        raise KitError(f"the zip held no {paths.TRAIN_LABELS}: is it the competition data?",
                       path=zip_path)
    if args.zip is None and not args.keep_zip:
        zip_path.unlink()
        print(f"deleted {zip_path} (pass --keep-zip to keep it)")
    print_summary(out)
    return 0
