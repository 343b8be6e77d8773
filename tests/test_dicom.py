import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import pixel_array

from kit.data import dicom
from kit.errors import KitError


def film(size=128):
    """A smooth test picture (JPEG-friendly) with a bright square."""
    yy, xx = np.mgrid[:size, :size]
    img = 60 + 100 * np.sin(xx / size * 3) ** 2 + 40 * (yy / size)
    img[size // 4: size // 2, size // 4: size // 2] += 50
    return np.clip(img, 0, 255).astype(np.uint8)


def test_jpeg_round_trip_within_tolerance(tmp_path):
    img = film()
    path = tmp_path / "a.dcm"
    dicom.write_dicom(path, img, "pid-1", 51, "M", "PA")
    out = dicom.read_pixels(path)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).mean() < 1.0
    assert np.abs(out.astype(int) - img).max() <= 8
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    # pydicom's Pillow handler agrees; its pylibjpeg one (where installed) rounds differently
    np.testing.assert_array_equal(pixel_array(ds, decoding_plugin="pillow"), out)
    assert np.abs(ds.pixel_array.astype(int) - out).max() <= 1


def test_uncompressed_round_trip_is_exact_odd_shape(tmp_path):
    img = film(64)[:33, :31]
    path = tmp_path / "b.dcm"
    dicom.write_dicom(path, img, "pid-2", None, "F", "AP", jpeg=False)
    np.testing.assert_array_equal(dicom.read_pixels(path), img)
    assert dicom.read_pixels(path, reduce=2).shape == (17, 16)


@pytest.mark.parametrize("reduce", [2, 4, 8])
def test_draft_reduce_shape_and_close_to_resized_full_decode(tmp_path, reduce):
    img = film(128)
    path = tmp_path / "c.dcm"
    dicom.write_dicom(path, img, "pid-3", 30, "M", "AP")
    small = dicom.read_pixels(path, reduce=reduce)
    assert small.shape == (128 // reduce, 128 // reduce)
    full = Image.fromarray(dicom.read_pixels(path))
    ref = np.asarray(full.resize(small.shape[::-1], Image.BOX)).astype(int)
    assert np.abs(small.astype(int) - ref).mean() < 3.0


def test_read_image_resizes_and_pads(tmp_path):
    path = tmp_path / "d.dcm"
    dicom.write_dicom(path, film(128)[:, :64], "pid-4", 7, "F", "PA", jpeg=False)
    arr, meta = dicom.read_image(path, 32)
    assert arr.shape == (32, 32)
    assert (arr[:, 16:] == 0).all() and arr[:, :16].mean() > 50
    assert (meta["Rows"], meta["Columns"]) == (128, 64)


def test_metadata(tmp_path):
    path = tmp_path / "e.dcm"
    dicom.write_dicom(path, film(64), "0004cfab-14fd-4e49-80ba-63a80b6bddd6", 58, "F", "AP")
    assert dicom.read_metadata(path) == {
        "patientId": "0004cfab-14fd-4e49-80ba-63a80b6bddd6", "PatientAge": 58, "PatientSex": "F",
        "ViewPosition": "AP", "Rows": 64, "Columns": 64,
        "TransferSyntaxUID": "1.2.840.10008.1.2.4.50"}
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.PhotometricInterpretation == "MONOCHROME2"


def test_monochrome1_is_inverted(tmp_path):
    path = tmp_path / "f.dcm"
    img = film(32)
    dicom.write_dicom(path, img, "pid-6", 40, "M", "PA", jpeg=False)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    np.testing.assert_array_equal(dicom.read_pixels(path), 255 - img)


def test_same_inputs_same_bytes(tmp_path):
    for name in ("g1.dcm", "g2.dcm"):
        dicom.write_dicom(tmp_path / name, film(64), "pid-7", 33, "M", "PA")
    assert (tmp_path / "g1.dcm").read_bytes() == (tmp_path / "g2.dcm").read_bytes()


def test_not_dicom_truncated_and_missing(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a dicom file at all" * 10)
    with pytest.raises(KitError, match=f"{junk}.*not a"):
        dicom.read_pixels(junk)
    good = tmp_path / "good.dcm"
    dicom.write_dicom(good, film(128), "pid-8", 50, "M", "PA")
    data = good.read_bytes()
    for keep in (len(data) - 400, 200):
        cut = tmp_path / f"cut{keep}.dcm"
        cut.write_bytes(data[:keep])
        with pytest.raises(KitError, match=str(cut)):
            dicom.read_pixels(cut)
    with pytest.raises(KitError, match="not found"):
        dicom.read_metadata(tmp_path / "missing.dcm")
