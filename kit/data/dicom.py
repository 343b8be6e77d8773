"""DICOM in and out; the only module that imports pydicom.

Pixels come back as uint8 (H, W) grayscale, bright = dense, as a reader sees the film: the
modality transform, the file's VOI LUT or window (kit.data.pixels: a 0.5-99.5 percentile window
when that leaves the image nearly constant), MONOCHROME1 inverted, PALETTE COLOR and colour as
luminance with a note. Kaggle's files (1024x1024 8-bit MONOCHROME2 JPEG Baseline) are decoded by
Pillow directly, in draft mode (DCT scaling to 1/2, 1/4, 1/8) when a smaller image is asked for;
other syntaxes by pydicom's handlers (Pillow, the pylibjpeg plugins where installed). Every
refusal is one KitError line naming the file.
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
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import (UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEGBaseline8Bit, MediaStorageDirectoryStorage,
                         PYDICOM_IMPLEMENTATION_UID, SecondaryCaptureImageStorage, generate_uid)

from kit.data import pixels
from kit.errors import KitError
from kit.io import atomic_open

REDUCE_FACTORS = (1, 2, 4, 8)
GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
PALETTE = "PALETTE COLOR"
PLUGIN_OF = {   # transfer syntax -> the pip packages that decode it when Pillow cannot
    **{f"1.2.840.10008.1.2.4.{n}": "pylibjpeg pylibjpeg-libjpeg" for n in (51, 57, 70, 80, 81)},
    **{f"1.2.840.10008.1.2.4.{n}": "pylibjpeg pylibjpeg-openjpeg" for n in (90, 91, 201, 202, 203)},
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DicomWarning(UserWarning):
    """A file read with a conversion a reader should know about (colour, palette, window)."""


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception (or text) as one short line: lines joined with '; ', pydicom's hints cut."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = re.sub(r"\s*Use force=True to force reading\.?", "", str(text))
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    text = text.replace(":; ", ": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _syntax_name(syntax: UID) -> str:
    return f"{syntax.name} ({syntax})" if syntax.name != syntax else f"transfer syntax {syntax}"


def _read(path: str | Path, pixels: bool) -> pydicom.Dataset:
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        raise KitError("DICOM file not found", path=path) from None
    except OSError as exc:
        raise KitError(f"cannot open the file ({one_line(exc)})", path=path) from None
    if Path(path).is_dir():
        raise KitError("is a folder, not a DICOM file", path=path)
    if size == 0:
        raise KitError("empty file (0 bytes): download it again or remove it", path=path)
    with warnings.catch_warnings():   # damage that matters raises below; keep progress bars clean
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError:
            ds = _read_without_meta(path, pixels)
        except Exception as exc:   # pydicom raises many types for damaged files
            raise KitError(f"damaged or truncated DICOM file ({one_line(exc)}): download it again",
                           path=path) from None
        _ensure_transfer_syntax(ds, path)
        try:
            reason = None if not pixels or any(k in ds for k in _PIXEL_KEYWORDS) else _no_pixels(ds)
        except Exception as exc:
            reason = f"damaged DICOM header ({one_line(exc)})"
    if reason:
        raise KitError(reason, path=path)
    return ds


def _read_without_meta(path: str | Path, pixels: bool) -> pydicom.Dataset:
    """A data set written without the 128-byte preamble and 'DICM' (older tools), else KitError."""
    with open(path, "rb") as fh:
        if fh.read(132)[128:132] == b"DICM":
            raise KitError("damaged DICOM file meta header: download it again", path=path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
        looks_dicom = (re.fullmatch(r"[0-9.]{3,64}", str(ds.get("SOPClassUID", "")))
                       or ("Rows" in ds and any(k in ds for k in _PIXEL_KEYWORDS)))
    except Exception:
        looks_dicom = False
    if not looks_dicom:
        raise KitError("not a DICOM file (no 'DICM' marker and no DICOM data set)", path=path)
    return ds


def _ensure_transfer_syntax(ds: pydicom.Dataset, path: str | Path) -> None:
    """Files without a transfer syntax in the meta header get the one they were read with."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        raise KitError("not a DICOM file: no transfer syntax in the file meta header", path=path)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _no_pixels(ds: pydicom.Dataset) -> str:
    """Why a file without pixel data is not an image, and what it is instead."""
    sop = UID(str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "")))
    if sop == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        return ("no pixel data: a DICOMDIR (an index of other DICOM files), not an image: "
                "use the image files it lists")
    name = sop.name if sop and sop.name != sop else ""
    if "Rows" in ds or "Image" in name:
        what = f"a {name} file" if name else "the file"
        return f"no pixel data in {what}: truncated or damaged file? download it again"
    if not name:
        return "no pixel data and no image header: not an image"
    return f"no pixel data: a {name.removesuffix(' Storage')} object, not an image"


def _field(ds: pydicom.Dataset, keyword: str, default: float | None = None, minimum: float = 0,
           cast: type = int):
    """A number in the header (the first of several); KitError naming the field when it is
    missing (and has no default), empty, invalid or below ``minimum``."""
    try:
        value = ds.get(keyword, default)
        value = cast(value[0] if isinstance(value, (list, pydicom.multival.MultiValue)) else value)
        if not np.isfinite(value):
            raise ValueError(value)
    except Exception:
        try:
            raw = ds.get_item(keyword).value if keyword in ds else None
        except Exception:
            raw = "?"
        empty = raw is None or (isinstance(raw, (str, bytes)) and not raw.strip())
        what = "missing" if keyword not in ds else "empty" if empty else f"invalid ({str(raw)[:40]!r})"
        raise KitError(f"{what} header value: damaged file, re-export it",
                       path=getattr(ds, "filename", None), field=keyword) from None
    if value < minimum:
        raise KitError(f"header value {value} is below {minimum}: damaged file, re-export it",
                       path=getattr(ds, "filename", None), field=keyword)
    return value


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "")
    except Exception:   # a damaged value of a field the kit does not need: treat as absent
        return ""


def _fast_jpeg(ds: pydicom.Dataset, shape: tuple[int, int], reduce: int) -> np.ndarray | None:
    """A JPEG Baseline grayscale frame through Pillow (draft mode for reduce > 1); None when the
    fragment is not a plain 8-bit grayscale JPEG of the header's size (pydicom takes over)."""
    try:
        image = Image.open(io.BytesIO(get_frame(ds.PixelData, 0, number_of_frames=1)))
        if image.mode != "L" or image.size != (shape[1], shape[0]):
            return None
        if reduce > 1:
            image.draft("L", pixels.draft_request(shape, reduce))
        return np.asarray(image)
    except Exception:
        return None


def _decode_raw(ds: pydicom.Dataset, path: str | Path, syntax: UID) -> np.ndarray:
    """pydicom's pixel handlers; decoder problems as one KitError line."""
    try:
        decoder = get_decoder(syntax)
    except Exception:
        raise KitError(f"unsupported transfer syntax: {_syntax_name(syntax)}; convert the file to "
                       "an uncompressed one (e.g. dcmtk's dcmdjpeg, gdcmconv --raw)",
                       path=path) from None
    if not decoder.is_available:
        raise KitError(f"no decoder installed for {_syntax_name(syntax)}: pip install "
                       f"{PLUGIN_OF.get(str(syntax), 'pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg')}",
                       path=path)
    try:
        return ds.pixel_array
    except Exception as exc:
        hint = PLUGIN_OF.get(str(syntax))
        missing = hint and "pylibjpeg" not in decoder.available_plugins
        what = "truncated" if "less than expected" in str(exc) else "cannot decode the"
        raise KitError(f"{what} {_syntax_name(syntax)} pixel data ({one_line(exc)})"
                       + (f"; pip install {hint} may decode it" if missing else ""),
                       path=path) from None


def _gray_values(ds: pydicom.Dataset, arr: np.ndarray, bits: int, signed: bool):
    """Grayscale stored values -> (values, window (low, high) | None, VOI function, unit, what
    chose the window)."""
    if "ModalityLUTSequence" in ds:
        values, rescaled = apply_modality_lut(arr, ds), True
    else:
        slope = _field(ds, "RescaleSlope", 1.0, -np.inf, float) or 1.0
        intercept = _field(ds, "RescaleIntercept", 0.0, -np.inf, float)
        rescaled = (slope, intercept) != (1.0, 0.0)
        values = arr.astype(np.float64) * slope + intercept if rescaled else arr
    function = _text(ds, "VOILUTFunction").strip().upper() or "LINEAR"
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        out = np.asarray(apply_voi(np.asarray(values), ds, index=0), dtype=np.float64)
        low, high = float(lut.min()), float(lut.max())
        return (out - low) / max(high - low, 1e-9), None, function, True, "its VOI LUT"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _field(ds, "WindowCenter", 0.0, -np.inf, float), \
            _field(ds, "WindowWidth", 0.0, -np.inf, float)
        if width > 0:
            return (values, pixels.linear_window(center, width, function), function, False,
                    f"its window (centre {center:g}, width {width:g})")
    if not rescaled and not signed and bits <= 8:   # as stored: 0 .. 2**bits - 1
        return values, (0.0, float(2 ** bits - 1)), "LINEAR", False, "its stored values"
    return values, None, "LINEAR", False, "its stored values"


def _picture(ds: pydicom.Dataset, arr: np.ndarray, path: str | Path, photometric: str,
             notes: dict[str, str]) -> np.ndarray:
    """Decoded stored values (H, W) or (H, W, 3) -> the uint8 picture (H, W)."""
    bits = _field(ds, "BitsStored", _field(ds, "BitsAllocated", 8), 1)
    if photometric == PALETTE or arr.ndim == 3:
        palette = photometric == PALETTE
        rgb = apply_color_lut(arr, ds) if palette else arr
        peak = (255 if rgb.dtype == np.uint8 or rgb.max() <= 255 else 65535) if palette \
            else 2 ** min(bits, 32) - 1
        values, window, function, unit = pixels.luminance(rgb, peak), None, "LINEAR", True
        source = "its luminance"
        notes["colour"] = (f"{path}: {photometric} image read {'through its palette ' * palette}"
                           "as luminance: the film is not grayscale")
    else:
        signed = _field(ds, "PixelRepresentation", 0) == 1
        values, window, function, unit, source = _gray_values(ds, arr, bits, signed)
    try:
        image, fallback = pixels.render(values, window, function,
                                        invert=photometric == "MONOCHROME1", unit=unit)
    except pixels.BlankImage as exc:
        raise KitError(f"{exc}: nothing to learn from this file", path=path) from None
    if fallback:
        notes["window"] = (f"{path}: {source} left the image nearly constant: shown with the "
                           "0.5-99.5 percentile window instead")
    return image


def _decode(ds: pydicom.Dataset, path: str | Path, reduce: int,
            notes: dict[str, str] | None = None) -> np.ndarray:
    """``read_pixels`` of an already-read dataset; conversions are noted in ``notes``."""
    notes = {} if notes is None else notes
    shape = (_field(ds, "Rows", None, 1), _field(ds, "Columns", None, 1))
    frames = _field(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise KitError(f"multi-frame file ({frames} frames): the kit reads one radiograph per "
                       "file; save the frame you want as its own file", path=path)
    samples = _field(ds, "SamplesPerPixel", 1, 1)
    photometric = _text(ds, "PhotometricInterpretation").strip().upper() or \
        ("MONOCHROME2" if samples == 1 else "RGB")
    if photometric not in GRAY + COLOUR + (PALETTE,):
        raise KitError(f"unsupported photometric interpretation {photometric!r}",
                       path=path, field="PhotometricInterpretation")
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = None
        if syntax == JPEGBaseline8Bit and samples == 1:
            arr = _fast_jpeg(ds, shape, reduce)
        if arr is None:
            arr = _decode_raw(ds, path, syntax)
            if arr.shape[:2] != shape:
                raise KitError(f"decoded pixels are {arr.shape[1]}x{arr.shape[0]} but the header "
                               f"says {shape[1]}x{shape[0]}: damaged file", path=path)
        try:
            image = _picture(ds, arr, path, photometric, notes)
        except KitError:
            raise
        except Exception as exc:   # a damaged LUT, palette or value field
            raise KitError(f"cannot render the pixels ({one_line(exc)})", path=path) from None
    return pixels.shrink(image, reduce, shape) if reduce > 1 else image


def read_pixels(path: str | Path, reduce: int = 1) -> np.ndarray:
    """The image as uint8 (H, W); ``reduce`` in {1, 2, 4, 8} gives shape (ceil(H/reduce),
    ceil(W/reduce)) (JPEG Baseline decodes at about that scale in Pillow's draft mode, others are
    box-averaged down). KitError (one line) for files it cannot read; DicomWarning for conversions
    a reader should know about (colour, a replaced window)."""
    if reduce not in REDUCE_FACTORS:
        raise ValueError(f"reduce must be one of {REDUCE_FACTORS}, got {reduce}")
    notes: dict[str, str] = {}
    image = _decode(_read(path, pixels=True), path, reduce, notes)
    for note in notes.values():
        warnings.warn(note, DicomWarning, stacklevel=2)
    return image


def _age(text: object) -> int | None:
    match = re.match(r"\s*0*(\d+)", str(text or ""))
    return int(match.group(1)) if match else None


def read_metadata(path: str | Path) -> dict:
    """Header fields: patientId, PatientAge (int or None), PatientSex, ViewPosition, Rows,
    Columns, TransferSyntaxUID. Reads no pixels."""
    return metadata_of(_read(path, pixels=False))


def metadata_of(ds: pydicom.Dataset) -> dict:
    """The ``read_metadata`` fields of an already-read dataset. Rows and Columns must be
    positive integers (KitError naming the field otherwise); a damaged text field reads as ''."""
    return {
        "patientId": _text(ds, "PatientID"),
        "PatientAge": _age(_text(ds, "PatientAge")),
        "PatientSex": _text(ds, "PatientSex"),
        "ViewPosition": _text(ds, "ViewPosition"),
        "Rows": _field(ds, "Rows", None, 1),
        "Columns": _field(ds, "Columns", None, 1),
        "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
    }


def read_image(path: str | Path, size: int) -> tuple[np.ndarray, dict]:
    """Decode one file to uint8 (size, size) plus its metadata (one read of the file).

    The longer side is scaled to ``size`` (aspect kept; a non-square image is padded with 0 at the
    bottom/right), decoding with the largest draft reduction that still gives >= size pixels.
    The metadata's ``notes`` ({kind: one line}) name conversions a reader should know about:
    ``colour`` (not a grayscale film), ``window`` (the percentile window replaced the file's).
    """
    ds = _read(path, pixels=True)
    meta = metadata_of(ds)
    side = max(meta["Rows"], meta["Columns"])
    reduce = max([r for r in REDUCE_FACTORS if -(-side // r) >= size] or [1])
    notes: dict[str, str] = {}
    arr = pixels.fit(_decode(ds, path, reduce, notes), (meta["Rows"], meta["Columns"]), size)
    return arr, {**meta, "notes": notes}


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
