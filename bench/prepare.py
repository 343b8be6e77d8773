"""Benchmark ``kit prepare`` against the raw JPEG decode limit; prints one JSON object.

Writes N 1024-px JPEG Baseline DICOMs with synthetic chest-film content (kit.data.demo +
kit.data.dicom.write_dicom) to a temp folder, then measures in the same run:
  decode_full / decode_draft: Pillow decoding the same JPEG bytes from memory (full size, and
                              draft mode at the reduction prepare uses for --size), one core;
  prepare_1_worker:           kit.data.prepare.prepare with workers=1 (read file, parse DICOM, decode,
                              resize, write .npy, metadata), one core;
  prepare_all_workers:        the same with one process per CPU;
  load_ms:                    Cache.load of one prepared image.
Usage: python bench/prepare.py [--n 200] [--size 512]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit import paths  # noqa: E402
from kit.data import prepare as cache
from kit.data import dicom
from kit.data import demo as synth


def make_files(folder: Path, n: int) -> None:
    """A Kaggle-layout folder with n 1024-px train DICOMs and their label file."""
    (folder / paths.TRAIN_IMAGES).mkdir(parents=True)
    rows = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        rng = np.random.default_rng([11, i])
        case = synth.sample_case(rng, positive=False)
        dicom.write_dicom(folder / paths.TRAIN_IMAGES / f"{case.patient_id}.dcm",
                          synth.render(case, paths.IMAGE_SIZE, rng), case.patient_id, case.age,
                          case.sex, case.view)
        rows.append(f"{case.patient_id},,,,,0")
    (folder / paths.TRAIN_LABELS).write_text("\n".join(rows) + "\n")


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_files(data, args.n)
        files = sorted((data / paths.TRAIN_IMAGES).glob("*.dcm"))
        import pydicom
        from pydicom.encaps import get_frame
        frames = [get_frame(pydicom.dcmread(f).PixelData, 0, number_of_frames=1) for f in files]
        reduce = max(r for r in dicom.REDUCE_FACTORS if -(-paths.IMAGE_SIZE // r) >= args.size)

        def decode(draft: bool) -> float:
            start = time.perf_counter()
            for frame in frames:
                image = Image.open(io.BytesIO(frame))
                if draft:
                    image.draft("L", (paths.IMAGE_SIZE // reduce,) * 2)
                image.load()
            return time.perf_counter() - start

        full, draft = decode(False), decode(True)
        start = time.perf_counter()
        cache.prepare(data, args.size, out=Path(tmp) / "c1", workers=1, splits=("train",))
        one = time.perf_counter() - start
        start = time.perf_counter()
        c = cache.prepare(data, args.size, out=Path(tmp) / "cn", workers=cpus, splits=("train",))
        many = time.perf_counter() - start
        ids = c.ids("train")
        start = time.perf_counter()
        for pid in ids:
            c.load(pid)
        load = time.perf_counter() - start
        per_core_prepare = rate(args.n, one)
        print(json.dumps({
            "images": args.n, "size": args.size, "draft_reduce": reduce, "cpus": cpus,
            "jpeg_kb_mean": round(sum(map(len, frames)) / len(frames) / 1024, 1),
            "decode_full_per_s_1core": rate(args.n, full),
            "decode_draft_per_s_1core": rate(args.n, draft),
            "prepare_per_s_1worker": per_core_prepare,
            f"prepare_per_s_{cpus}workers": rate(args.n, many),
            "draft_decode_over_prepare_per_core": round(rate(args.n, draft) / per_core_prepare, 2),
            "load_ms": round(load / len(ids) * 1000, 3),
            "npy_kb": round((c.path / "train" / f"{ids[0]}.npy").stat().st_size / 1024, 1),
        }))


if __name__ == "__main__":
    main()
