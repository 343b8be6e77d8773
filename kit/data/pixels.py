"""Decoded pixel values -> the uint8 (H, W) picture a reader sees; numpy and Pillow only.

kit.data.dicom reads the file and its header and hands over plain numbers: the values after the
modality transform (rescale slope/intercept or modality LUT), the window the file asks for, or
already-windowed values in [0, 1] (VOI LUT, colour luminance). This module windows, falls back to
a percentile window when the result would be (nearly) constant, inverts MONOCHROME1 and changes
the size. Bright = dense (MONOCHROME2 convention) in every output.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

PERCENTILES = (0.5, 99.5)   # the robust window: these percentiles of the values map to 0 and 255
MIN_SPREAD = 32             # fewer gray levels than this between those percentiles: "nearly constant"
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601 luminance, as Pillow's convert("L")


class BlankImage(ValueError):
    """Every pixel has the same value: no window can show anything."""


def linear_window(center: float, width: float, function: str = "LINEAR") -> tuple[float, float]:
    """(low, high) values that map to 0 and 1 under the DICOM window (PS3.3 C.11.2.1.2).

    LINEAR: the ramp from c - 0.5 - (w - 1) / 2 to c - 0.5 + (w - 1) / 2; LINEAR_EXACT: from
    c - w / 2 to c + w / 2 (so is SIGMOID's, centred on c). A width below 1 is a threshold at the
    centre."""
    if function in ("LINEAR_EXACT", "SIGMOID"):
        low, high = center - width / 2, center + width / 2
    else:
        low = center - 0.5 - (width - 1) / 2
        high = low + (width - 1)
    return low, max(high, low + 1e-3)


def apply_window(values: np.ndarray, low: float, high: float, function: str = "LINEAR") -> np.ndarray:
    """Values -> float32 in [0, 1]: a linear ramp from ``low`` to ``high``, or for SIGMOID the
    logistic curve centred between them (width = high - low, PS3.3 C.11.2.1.3.1)."""
    values = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        center, width = (low + high) / 2, max(high - low, 1e-3)
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 0..255 (rounded)."""
    return np.clip(np.rint(np.asarray(unit, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def spread(image: np.ndarray) -> int:
    """Gray levels between the 0.5th and the 99.5th percentile of a uint8 image (a large image is
    sampled on a grid of about 256K pixels)."""
    step = max(1, int((image.size / 262144) ** 0.5))
    counts = np.cumsum(np.bincount(image[::step, ::step].ravel(), minlength=256))
    total = counts[-1]
    low = int(np.searchsorted(counts, total * PERCENTILES[0] / 100, side="right"))
    high = int(np.searchsorted(counts, total * PERCENTILES[1] / 100, side="left"))
    return max(high - low, 0)


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """(low, high) of the robust window: the 0.5th and 99.5th percentiles, else the minimum and
    maximum when those coincide. Raises BlankImage when every value is the same."""
    low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    return (low, high) if high > low else value_span(values)


def render(values: np.ndarray, window: tuple[float, float] | None, function: str = "LINEAR",
           invert: bool = False, unit: bool = False) -> tuple[np.ndarray, bool]:
    """The uint8 picture of ``values`` and whether the robust window replaced the one given.

    ``window`` is (low, high) in value units; None means the values' own range (minimum to
    maximum). ``unit=True``: the values are already in [0, 1] (windowed by a LUT, or colour
    luminance) and ``window`` is ignored. When that picture spans fewer than MIN_SPREAD gray levels
    between its 0.5th and 99.5th percentiles (a window beside every pixel, 0/1 data in 8 bits),
    the values are shown with :func:`robust_range` instead. ``invert``: MONOCHROME1 (low = white).
    """
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.isfinite(values).all():   # NaN/inf: the lowest value
        finite = np.isfinite(values)
        values = np.where(finite, values, values[finite].min() if finite.any() else 0.0)
    if unit:
        image = to_uint8(values)
    elif window is None:
        image = to_uint8(apply_window(values, *value_span(values)))
    elif values.dtype == np.uint8 and window == (0.0, 255.0) and function != "SIGMOID":
        image = values                                  # the 8-bit radiograph as stored
    else:
        image = to_uint8(apply_window(values, *window, function))
    fallback = False
    if spread(image) < MIN_SPREAD:
        robust = to_uint8(apply_window(values, *robust_range(values)))
        fallback = spread(robust) > spread(image) or len(np.unique(image)) < len(np.unique(robust))
        image = robust if fallback else image
    if invert:
        image = 255 - image
    return np.ascontiguousarray(image), fallback


def value_span(values: np.ndarray) -> tuple[float, float]:
    """(minimum, maximum) of the values; BlankImage when they coincide."""
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        raise BlankImage(f"the image is blank: every pixel has the value {low:g}")
    return low, high


def luminance(rgb: np.ndarray, max_value: float) -> np.ndarray:
    """(H, W, 3) colour values in 0..max_value -> float32 luminance in [0, 1]."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return np.clip(rgb @ np.asarray(LUMA, dtype=np.float32) / max(float(max_value), 1.0), 0.0, 1.0)


def reduced_shape(shape: tuple[int, int], reduce: int) -> tuple[int, int]:
    """(ceil(H / reduce), ceil(W / reduce))."""
    return tuple(-(-int(n) // reduce) for n in shape)   # type: ignore[return-value]


def draft_request(shape: tuple[int, int], reduce: int) -> tuple[int, int]:
    """The (width, height) to ask Pillow's JPEG draft mode for so that it picks the DCT scale
    1/reduce (it picks the largest of 1/2, 1/4, 1/8 that stays >= the request)."""
    height, width = shape
    return max(1, width // reduce), max(1, height // reduce)


def shrink(image: np.ndarray, reduce: int, full_shape: tuple[int, int] | None = None) -> np.ndarray:
    """A uint8 image of ``full_shape`` (default its own shape; a draft decode may already be
    smaller) brought to :func:`reduced_shape` by box averaging."""
    target = reduced_shape(full_shape or image.shape, reduce)
    if image.shape == target:
        return image
    picture = Image.fromarray(image)
    if full_shape is None or tuple(full_shape) == image.shape:
        picture = picture.reduce(reduce)                 # exact ceil division, box filter
    if picture.size != (target[1], target[0]):
        picture = picture.resize((target[1], target[0]), Image.BOX)
    return np.asarray(picture)


def fit(image: np.ndarray, full_shape: tuple[int, int], size: int) -> np.ndarray:
    """A decoded image of an original ``full_shape`` (perhaps already reduced) -> (size, size):
    the longer side scaled to ``size``, aspect kept, padded with 0 at the bottom/right."""
    scale = size / max(full_shape)
    height, width = (max(1, round(n * scale)) for n in full_shape)
    if image.shape != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    if image.shape != (size, size):
        image = np.pad(image, ((0, size - height), (0, size - width)))
    return image
