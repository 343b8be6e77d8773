"""DICOM in and out; the only module that imports pydicom.

Pixels come back as uint8 (H, W) grayscale, bright = dense (MONOCHROME2 convention). The real
Kaggle files are 1024x1024 8-bit MONOCHROME2 JPEG Baseline; their single JPEG fragment is decoded
by Pillow directly, which allows Pillow's draft mode (DCT scaling) to decode at 1/2, 1/4 or 1/8
of the size for a fraction of the cost.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import (ExplicitVRLittleEndian, JPEGBaseline8Bit, PYDICOM_IMPLEMENTATION_UID,
                         SecondaryCaptureImageStorage, generate_uid)

from kit.errors import KitError
from kit.io import atomic_open

REDUCE_FACTORS = (1, 2, 4, 8)


def _read(path: str | Path, pixels: bool) -> pydicom.Dataset:
    try:
        with warnings.catch_warnings():   # damage that matters raises below; keep progress bars clean
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except FileNotFoundError:
        raise KitError("DICOM file not found", path=path) from None
    except Exception as exc:   # pydicom raises many types for damaged files
        raise KitError(f"not a readable DICOM file ({type(exc).__name__}: {exc})", path=path) from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise KitError("not a DICOM file: no transfer syntax in the file meta header", path=path)
    if pixels and "PixelData" not in ds:
        raise KitError("DICOM file has no complete pixel data (truncated file?)", path=path)
    return ds


def _to_uint8(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """Rescale, window and invert a decoded frame to uint8 MONOCHROME2."""
    if arr.ndim != 2:
        raise ValueError(f"expected one grayscale frame, got pixel array shape {arr.shape}")
    if arr.dtype != np.uint8 or "RescaleSlope" in ds or "WindowCenter" in ds:
        values = arr.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) \
            + float(ds.get("RescaleIntercept", 0) or 0)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            center = float(np.ravel(ds.WindowCenter)[0])
            width = max(float(np.ravel(ds.WindowWidth)[0]), 1.0)
            low, high = center - width / 2, center + width / 2
        else:
            low, high = float(values.min()), float(values.max())
        scale = 255.0 / max(high - low, 1e-6)
        arr = np.clip((values - low) * scale, 0, 255).round().astype(np.uint8)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        arr = 255 - arr
    return arr


def read_pixels(path: str | Path, reduce: int = 1) -> np.ndarray:
    """The image as uint8 (H, W).

    ``reduce`` in {1, 2, 4, 8} asks for an image 1/reduce the size, shape (ceil(H/reduce),
    ceil(W/reduce)): JPEG Baseline files decode directly at that scale (Pillow draft mode);
    other files decode fully and are box-averaged down. Raises KitError for unreadable files.
    """
    if reduce not in REDUCE_FACTORS:
        raise ValueError(f"reduce must be one of {REDUCE_FACTORS}, got {reduce}")
    return _decode(_read(path, pixels=True), path, reduce)


def _decode(ds: pydicom.Dataset, path: str | Path, reduce: int) -> np.ndarray:
    """``read_pixels`` of an already-read dataset."""
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        if syntax == JPEGBaseline8Bit:
            frame = get_frame(ds.PixelData, 0, number_of_frames=1)
            image = Image.open(io.BytesIO(frame))
            if reduce > 1:
                image.draft("L", (-(-image.width // reduce), -(-image.height // reduce)))
            arr = np.asarray(image if image.mode == "L" else image.convert("L"))
            reduced = reduce > 1
        else:
            arr = ds.pixel_array
            reduced = False
        arr = _to_uint8(ds, arr)
    except Exception as exc:   # decoder errors: truncated JPEG, bad lengths, unsupported syntax
        raise KitError(f"cannot decode pixels ({type(exc).__name__}: {exc})", path=path) from None
    if reduce > 1 and not reduced:
        arr = np.asarray(Image.fromarray(arr).reduce(reduce))
    return arr


def _age(text: object) -> int | None:
    match = re.match(r"\s*0*(\d+)", str(text or ""))
    return int(match.group(1)) if match else None


def read_metadata(path: str | Path) -> dict:
    """Header fields: patientId, PatientAge (int or None), PatientSex, ViewPosition, Rows,
    Columns, TransferSyntaxUID. Reads no pixels."""
    ds = _read(path, pixels=False)
    return metadata_of(ds)


def metadata_of(ds: pydicom.Dataset) -> dict:
    """The ``read_metadata`` fields of an already-read dataset."""
    return {
        "patientId": str(ds.get("PatientID", "")),
        "PatientAge": _age(ds.get("PatientAge")),
        "PatientSex": str(ds.get("PatientSex", "")),
        "ViewPosition": str(ds.get("ViewPosition", "")),
        "Rows": int(ds.get("Rows", 0)),
        "Columns": int(ds.get("Columns", 0)),
        "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
    }


def read_image(path: str | Path, size: int) -> tuple[np.ndarray, dict]:
    """Decode one file to uint8 (size, size) plus its metadata (one read of the file).

    The longer side is scaled to ``size`` (aspect kept; a non-square image is padded with 0 at the
    bottom/right), decoding with the largest draft reduction that still gives >= size pixels.
    """
    ds = _read(path, pixels=True)
    meta = metadata_of(ds)
    side = max(meta["Rows"], meta["Columns"])
    reduce = max([r for r in REDUCE_FACTORS if -(-side // r) >= size] or [1])
    arr = _decode(ds, path, reduce)
    scale = size / side
    height, width = (max(1, round(n * scale)) for n in (meta["Rows"], meta["Columns"]))
    if arr.shape != (height, width):
        arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.BILINEAR))
    if arr.shape != (size, size):
        arr = np.pad(arr, ((0, size - height), (0, size - width)))
    return arr, meta


def write_dicom(path: str | Path, pixels: np.ndarray, patient_id: str, age: int | None, sex: str,
                view: str, jpeg: bool = True, quality: int = 95) -> None:
    """Write a Kaggle-like DICOM (atomically): Secondary Capture, modality CR, MONOCHROME2, 8-bit.

    ``pixels`` is uint8 (H, W). ``jpeg=True`` stores one JPEG Baseline fragment encoded by Pillow
    at ``quality``; ``jpeg=False`` stores Explicit VR Little Endian. UIDs derive from the
    patientId, so the same inputs give the same bytes.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"pixels must be uint8 (H, W), got {pixels.dtype} {pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, "sop"])
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientAge = "" if age is None else f"{int(age):03d}Y"   # DICOM Age String
    ds.PatientSex = sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.SeriesDescription = f"view: {view}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=quality)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        raw = np.ascontiguousarray(pixels).tobytes()
        ds.PixelData = raw + b"\0" * (len(raw) % 2)   # DICOM values have even length
        ds["PixelData"].VR = "OB"
    with atomic_open(path, "wb") as fh:
        pydicom.dcmwrite(fh, ds, enforce_file_format=True)
