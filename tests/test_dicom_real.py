"""Real-world DICOM variety: pydicom's own test files, and variants written here with pydicom.

Every file is either read into a non-constant uint8 image of the promised shape or refused with
a one-line KitError that names it; never another exception, never a constant image.
"""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, RLELossless, SecondaryCaptureImageStorage, generate_uid)

from kit.data import dicom, pixels
from kit.errors import KitError

REPO = Path(__file__).resolve().parent.parent
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ALL_FILES = sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


def read(path, reduce=1):
    """read_pixels plus the DicomWarning lines it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = dicom.read_pixels(path, reduce)
    return image, [str(w.message) for w in caught if issubclass(w.category, dicom.DicomWarning)]


def refusal(path, reader=dicom.read_pixels, *args) -> str:
    with pytest.raises(KitError) as info:
        reader(path, *args)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def make_dicom(path, arr, photometric="MONOCHROME2", bits_stored=None, syntax=None, **fields):
    """A Secondary Capture file of ``arr`` (explicit VR little endian unless ``syntax`` names a
    compression pydicom can encode); ``fields`` are set last (None deletes)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = Path(path).stem
    bits = bits_stored or (8 if arr.dtype.itemsize == 1 else 16)
    ds.set_pixel_data(arr, photometric, bits)
    if syntax is not None and syntax != DeflatedExplicitVRLittleEndian:
        ds.compress(syntax)
    elif syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    with warnings.catch_warnings():       # invalid values are the point of some variants
        warnings.simplefilter("ignore")
        for key, value in fields.items():
            if value is None:
                del ds[key]
            else:
                setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(height=48, width=40, low=0, high=4000, dtype=np.uint16):
    yy, xx = np.mgrid[:height, :width]
    return (low + (high - low) * (yy * width + xx) / (height * width - 1)).astype(dtype)


# ------------------------------------------------------------------ pydicom's own test files
EXPECTED_REFUSAL = {   # file -> words its one line must hold
    "rtplan.dcm": "RT Plan", "reportsi.dcm": "SR", "test-SR.dcm": "SR",
    "dicomdirtests/DICOMDIR": "DICOMDIR", "rtdose.dcm": "multi-frame",
    "SC_rgb_rle_2frame.dcm": "multi-frame", "README.txt": "not a DICOM file",
    "MR_truncated.dcm": "Explicit VR Little Endian",
}
EXPECTED_READ = {   # file -> words of the warning it must give ('' for none)
    "CT_small.dcm": "", "MR_small_RLE.dcm": "", "image_dfl.dcm": "",
    "dicomdirtests/77654033/CT2/17166": "percentile window",
    "dicomdirtests/77654033/CT2/17196": "percentile window",
    "examples_palette.dcm": "PALETTE COLOR", "SC_rgb_rle.dcm": "not grayscale",
    "SC_rgb_jpeg_dcmtk.dcm": "not grayscale", "liver_1frame.dcm": "",
}


@pytest.mark.parametrize("path", ALL_FILES, ids=[str(p.relative_to(TEST_FILES)) for p in ALL_FILES])
def test_pydicom_test_file_is_read_or_refused_in_one_line(path):
    name = str(path.relative_to(TEST_FILES))
    try:
        image, notes = read(path)
    except KitError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{path}"), message
        assert "force=True" not in message
        assert name not in EXPECTED_READ, message
        assert EXPECTED_REFUSAL.get(name, "") in message
        return
    assert name not in EXPECTED_REFUSAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    assert image.dtype == np.uint8 and image.shape == (ds.Rows, ds.Columns)
    assert image.min() < image.max(), "constant image"
    assert EXPECTED_READ.get(name, "") in " ".join(notes)
    assert all("\n" not in n and str(path) in n for n in notes)
    small, _ = read(path, 4)
    assert small.shape == pixels.reduced_shape(image.shape, 4)
    square, meta = dicom.read_image(path, 32)
    assert square.shape == (32, 32) and square.dtype == np.uint8


def test_most_pydicom_image_files_are_read():
    """With Pillow and the pylibjpeg plugins every single-frame image is read but the damaged
    ones (truncated pixels, a bad VR, 12-bit JPEG libjpeg cannot parse, a J2K stream with a
    delimiter inside)."""
    read_ok = 0
    for path in ALL_FILES:
        try:
            read(path)
            read_ok += 1
        except KitError:
            pass
    assert read_ok >= 75


# ------------------------------------------------------------------ variants written here
def test_monochrome1_16bit_with_window_is_inverted(tmp_path):
    arr = ramp()
    kw = dict(WindowCenter=2000, WindowWidth=4000)
    two = read(make_dicom(tmp_path / "m2.dcm", arr, "MONOCHROME2", 12, **kw))[0]
    one = read(make_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", 12, **kw))[0]
    np.testing.assert_array_equal(one, 255 - two)
    assert two[0, 0] == 0 and two[-1, -1] == 255


def test_window_that_clips_everything_falls_back_to_percentiles(tmp_path):
    arr = ramp(low=0, high=900)     # CT numbers -1024 .. -124: all below the window
    path = make_dicom(tmp_path / "ct.dcm", arr, bits_stored=12, RescaleIntercept=-1024,
                      RescaleSlope=1, WindowCenter=30, WindowWidth=100)
    image, notes = read(path)
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) > 200
    assert len(notes) == 1 and "percentile window" in notes[0] and str(path) in notes[0]
    meta = dicom.read_image(path, 32)[1]
    assert list(meta["notes"]) == ["window"]


def test_window_and_rescale_are_applied(tmp_path):
    arr = ramp(low=0, high=2000)
    path = make_dicom(tmp_path / "w.dcm", arr, bits_stored=12, RescaleSlope=2,
                      RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=1001)
    image, notes = read(path)
    values = arr * 2.0 - 1000                        # 500 .. 1500 is the ramp (LINEAR)
    expected = np.clip(np.rint((values - 499.5) / 1000 * 255), 0, 255)
    assert np.abs(image.astype(int) - expected).max() <= 1 and notes == []


def test_voi_lut_sequence_is_applied(tmp_path):
    arr = ramp(low=0, high=255).astype(np.uint16)
    path = make_dicom(tmp_path / "lut.dcm", arr, bits_stored=8)
    ds = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new("LUTData", "US", [int(v) for v in np.arange(256)[::-1] * 100])   # reversing
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    image = read(path)[0]
    assert image[0, 0] == 255 and image[-1, -1] == 0


@pytest.mark.parametrize("bits,signed", [(1, False), (8, False), (12, True), (16, False)])
def test_bit_depths_and_sign(tmp_path, bits, signed):
    if bits == 1:
        arr = (ramp(high=100) > 60).astype(np.uint8)
    elif bits == 8:
        arr = (ramp(high=100) > 60).astype(np.uint8)     # unscaled 0/1 data in 8 bits
    else:
        arr = ramp(low=-2000 if signed else 0, high=2047 if signed else 65535,
                   dtype=np.int16 if signed else np.uint16)
    image, _ = read(make_dicom(tmp_path / "b.dcm", arr, bits_stored=bits))
    assert image.min() == 0 and image.max() == 255
    assert image[0, 0] == 0 and image[-1, -1] == 255


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless,
                                    DeflatedExplicitVRLittleEndian])
def test_lossless_compressions_read_like_uncompressed(tmp_path, syntax):
    if syntax != DeflatedExplicitVRLittleEndian and not get_encoder(syntax).is_available:
        pytest.skip(f"no {syntax.name} encoder installed")
    arr = ramp(high=4000)
    plain = read(make_dicom(tmp_path / "plain.dcm", arr, bits_stored=12))[0]
    packed = make_dicom(tmp_path / "packed.dcm", arr, bits_stored=12, syntax=syntax)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read(packed)[0], plain)


def test_colour_is_luminance_with_a_warning(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10, 0], rgb[:, 10:20, 1], rgb[:, 20:, 2] = 255, 255, 255
    image, notes = read(make_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert [image[0, 0], image[0, 15], image[0, 25]] == [76, 150, 29]   # BT.601 weights
    assert len(notes) == 1 and "not grayscale" in notes[0]


def test_multi_frame_is_refused_whatever_the_compression(tmp_path):
    frames = np.stack([ramp(high=200, dtype=np.uint8)] * 3)
    for syntax in (None, RLELossless):
        path = make_dicom(tmp_path / f"mf{syntax is None}.dcm", frames, bits_stored=8,
                          syntax=syntax)
        assert "multi-frame file (3 frames)" in refusal(path)


def test_damaged_header_values_are_one_line_errors(tmp_path):
    good = ramp(high=4000)
    path = make_dicom(tmp_path / "rows.dcm", good, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.Rows = None                                    # empty Rows, as found in the wild
    ds.save_as(path)
    assert "field 'Rows': empty" in refusal(path)
    assert "field 'Rows'" in refusal(path, dicom.read_metadata)
    assert "field 'Rows'" in refusal(path, dicom.read_image, 32)
    with pytest.raises(KitError, match="Rows"):
        dicom.metadata_of(pydicom.dcmread(path))
    bad_slope = make_dicom(tmp_path / "slope.dcm", good, bits_stored=12, RescaleSlope="1")
    raw = bad_slope.read_bytes().replace(b"DS\x02\x001 ", b"DS\x02\x00x ")
    bad_slope.write_bytes(raw)
    assert "RescaleSlope" in refusal(bad_slope)
    odd_age = make_dicom(tmp_path / "age.dcm", good, bits_stored=12, PatientAge="abc")
    assert dicom.read_metadata(odd_age)["PatientAge"] is None     # unneeded field: tolerated


def test_empty_file_not_dicom_and_no_pixels(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert "empty file (0 bytes)" in refusal(empty)
    assert "folder" in refusal(tmp_path)
    no_pixels = make_dicom(tmp_path / "np.dcm", ramp(), bits_stored=12, PixelData=None)
    assert "truncated" in refusal(no_pixels)
    assert "RT Plan object" in refusal(TEST_FILES / "rtplan.dcm")


def test_file_without_meta_header_is_read(tmp_path):
    path = make_dicom(tmp_path / "m.dcm", ramp(high=4000), bits_stored=12)
    ds = pydicom.dcmread(path)
    bare = tmp_path / "bare.dcm"
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read(bare)[0], read(path)[0])


@pytest.mark.parametrize("side,reduce,expected", [(3, 4, 1), (1020, 8, 128), (33, 2, 17),
                                                  (1024, 4, 256)])
def test_reduce_is_ceil_division_for_jpeg_and_raw(tmp_path, side, reduce, expected):
    img = np.linspace(30, 220, side * side).reshape(side, side).astype(np.uint8)
    for jpeg in (True, False):
        path = tmp_path / f"r{jpeg}.dcm"
        dicom.write_dicom(path, img, "pid", 40, "M", "PA", jpeg=jpeg)
        assert dicom.read_pixels(path, reduce).shape == (expected, expected)


def test_missing_plugins_are_named_and_jpeg_baseline_still_reads(tmp_path):
    """Kaggle's image: Pillow only. JPEG Baseline still reads (draft path); JPEG-LS and 12-bit
    JPEG say which package decodes them, in one line."""
    baseline = tmp_path / "base.dcm"
    dicom.write_dicom(baseline, ramp(64, 64, 20, 200, np.uint8), "p", 40, "M", "PA")
    code = f"""
import sys
for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):
    sys.modules[name] = None
from kit.data import dicom
from kit.errors import KitError
print("SHAPE", dicom.read_pixels({str(baseline)!r}, 2).shape)
for name in ("MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm", "MR_small_RLE.dcm"):
    try:
        dicom.read_pixels({str(TEST_FILES)!r} + "/" + name)
        print("READ", name)
    except KitError as exc:
        print("ERROR", exc)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "SHAPE (32, 32)" in lines
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 2 and "READ MR_small_RLE.dcm" in lines
    assert "JPEG-LS Lossless" in errors[0] and "pip install pylibjpeg pylibjpeg-libjpeg" in errors[0]
    assert "JPEG Extended" in errors[1] and "pip install pylibjpeg pylibjpeg-libjpeg" in errors[1]


def test_render_helpers():
    assert pixels.spread(np.zeros((10, 10), np.uint8)) == 0
    assert pixels.linear_window(40, 400) == (-160.0, 239.0)     # c - 0.5 -/+ (w - 1) / 2
    with pytest.raises(pixels.BlankImage):
        pixels.render(np.full((4, 4), 7, np.uint16), None)
    image, fallback = pixels.render(np.arange(16, dtype=np.uint8).reshape(4, 4), (0.0, 255.0))
    assert fallback and image.min() == 0 and image.max() == 255
