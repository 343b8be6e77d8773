"""Read and validate the Kaggle label CSVs; command ``labels`` prints their counts.

Ground truth format (used by the metric, tune and score): ``boxes_by_patient(df)`` maps every
patientId to a float64 array (k, 4) of ``[x, y, w, h]``: top-left corner, width and height in
pixels of the ORIGINAL 1024x1024 image, in file order; negative images map to shape (0, 4).

Row numbers in error messages are spreadsheet rows: the header is row 1, the first data row is 2.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.io import read_csv

BOX_FIELDS = ["x", "y", "width", "height"]
LABEL_COLUMNS = ["patientId", *BOX_FIELDS, "Target"]
CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
_HOW_TO_GET = "run `make data` (real Kaggle data) or `make demo-data` (synthetic data)"


def _read_raw(path: str | Path, required: list[str]) -> pd.DataFrame:
    """A CSV as strings ("" for empty cells) with its required columns checked."""
    path = Path(path)
    df = read_csv(path, required, not_found=f"file not found: {_HOW_TO_GET}", dtype=str,
                  keep_default_na=False, na_filter=False)
    df = df[required].copy()
    for column in required:
        df[column] = df[column].astype(object).str.strip()
    empty_id = df["patientId"] == ""
    _fail_first(empty_id, path, "patientId", "empty patientId")
    return df


def _fail_first(bad: pd.Series | np.ndarray, path: Path, field: str, message: str) -> None:
    """Raise KitError for the first True row of ``bad`` (positional), if any."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise KitError(message, path=path, row=i + 2, field=field)


def read_labels(path: str | Path) -> pd.DataFrame:
    """Validated ``stage_2_train_labels.csv`` (or ``demo_test_labels.csv``), in file order.

    Columns: patientId (str), x, y, width, height (float64 pixels of the 1024 image, top-left
    x/y; NaN on negative rows), Target (int 0/1). Raises KitError on any bad row.
    """
    path = Path(path)
    raw = _read_raw(path, LABEL_COLUMNS)
    out = pd.DataFrame({"patientId": raw["patientId"].astype(str)})
    filled = {}
    for field in BOX_FIELDS:
        filled[field] = raw[field] != ""
        values = pd.to_numeric(raw[field].where(filled[field]), errors="coerce")
        _fail_first(filled[field] & (values.isna() | ~np.isfinite(values.fillna(0))), path, field,
                    f"not a number: {field} must be a pixel value like 264.0 or empty")
        out[field] = values.astype("float64")
    _fail_first(~raw["Target"].isin(["0", "1"]), path, "Target", "Target must be 0 or 1")
    out["Target"] = raw["Target"].astype(int)
    positive = out["Target"] == 1
    for field in BOX_FIELDS:
        _fail_first(positive & ~filled[field], path, field, "Target is 1 but the box field is empty")
        _fail_first(~positive & filled[field], path, field,
                    "Target is 0 but the box field is filled (negative rows have no box)")
    for field in ("width", "height"):
        _fail_first(positive & (out[field] <= 0), path, field, f"{field} must be > 0")
    for field in ("x", "y"):
        _fail_first(positive & (out[field] < 0), path, field, f"{field} must be >= 0")
    size = paths.IMAGE_SIZE
    for start, extent in (("x", "width"), ("y", "height")):
        _fail_first(positive & (out[start] + out[extent] > size), path, extent,
                    f"box leaves the {size}x{size} image ({start} + {extent} > {size})")
    mixed = out.groupby("patientId", sort=False)["Target"].transform("nunique") > 1
    conflict = mixed & out.duplicated("patientId")
    _fail_first(conflict, path, "patientId",
                "this patientId has both a negative row (Target 0) and a box row (Target 1)")
    negative_dupes = ~positive & out.duplicated("patientId")
    _fail_first(negative_dupes, path, "patientId", "duplicate negative row for this patientId")
    return out


def boxes_by_patient(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every patientId -> float64 (k, 4) ``[x, y, w, h]`` (1024-px pixels), file order; negatives (0, 4)."""
    result: dict[str, np.ndarray] = {pid: np.zeros((0, 4)) for pid in df["patientId"].unique()}
    boxes = df[df["Target"] == 1]
    values = boxes[BOX_FIELDS].to_numpy(dtype="float64")
    for pid, rows in boxes.groupby("patientId", sort=False).indices.items():
        result[pid] = values[rows]
    return result


def read_class_info(path: str | Path) -> pd.DataFrame:
    """Validated ``stage_2_detailed_class_info.csv``: patientId, class (duplicate rows kept)."""
    path = Path(path)
    df = _read_raw(path, ["patientId", "class"])
    _fail_first(~df["class"].isin(CLASSES), path, "class",
                f"unknown class; expected one of: {' | '.join(CLASSES)}")
    return df.reset_index(drop=True)


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    """Validated ``stage_2_sample_submission.csv``: patientId (unique), PredictionString.

    A PredictionString is empty or groups of 5 numbers ``conf x y w h``.
    """
    path = Path(path)
    df = _read_raw(path, ["patientId", "PredictionString"])
    _fail_first(df["patientId"].duplicated(), path, "patientId", "duplicate patientId")
    for i, text in enumerate(df["PredictionString"]):
        tokens = text.split()
        try:
            [float(t) for t in tokens]
        except ValueError:
            raise KitError("PredictionString must hold numbers", path=path, row=i + 2,
                           field="PredictionString") from None
        if len(tokens) % 5:
            raise KitError("PredictionString must be groups of 5 numbers: conf x y w h",
                           path=path, row=i + 2, field="PredictionString")
    return df.reset_index(drop=True)


def summarize(labels_df: pd.DataFrame, classes_df: pd.DataFrame | None = None) -> dict:
    """Counts: images, positive images, boxes, images per box count, and classes per image."""
    per_image = labels_df.groupby("patientId", sort=False)["Target"].sum()
    counts = per_image.value_counts().sort_index()
    summary = {
        "images": int(len(per_image)),
        "positive_images": int((per_image > 0).sum()),
        "boxes": int(labels_df["Target"].sum()),
        "boxes_per_image": {str(int(k)): int(v) for k, v in counts.items()},
    }
    if classes_df is not None:
        unique = classes_df.drop_duplicates(["patientId", "class"])
        summary["classes"] = {str(k): int(v) for k, v in unique["class"].value_counts().items()}
    return summary


def add_labels_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder in Kaggle's layout (default: the folder of --labels, else "
                             "data/rsna if present, else data/demo)")
    parser.add_argument("--labels", type=Path, default=None,
                        help=f"label CSV (default: DATA/{paths.TRAIN_LABELS})")
    parser.add_argument("--classes", type=Path, default=None,
                        help=f"class CSV (default: DATA/{paths.CLASS_INFO} when present)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")


def run_labels(args: argparse.Namespace) -> int:
    # the class and sample files are looked for beside the labels unless --data says otherwise
    data = args.data or (args.labels.parent if args.labels else paths.default_data_dir())
    labels = read_labels(args.labels or data / paths.TRAIN_LABELS)
    classes_path = args.classes or data / paths.CLASS_INFO
    classes = None
    if args.classes or classes_path.is_file():
        classes = read_class_info(classes_path)
        missing = set(labels["patientId"]) ^ set(classes["patientId"])
        if missing:
            raise KitError(f"{len(missing)} patientIds are in only one of the label and class "
                           f"files, e.g. {sorted(missing)[0]}", path=classes_path, field="patientId")
    summary = summarize(labels, classes)
    sample = data / paths.SAMPLE_SUBMISSION
    if sample.is_file():
        summary["test_images"] = len(read_sample_submission(sample))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    rows = [("images", summary["images"]), ("positive images", summary["positive_images"]),
            ("boxes", summary["boxes"])]
    rows += [(f"images with {k} box(es)", n) for k, n in summary["boxes_per_image"].items()]
    rows += [(f"class {name}", n) for name, n in summary.get("classes", {}).items()]
    if "test_images" in summary:
        rows.append(("test images", summary["test_images"]))
    for name, n in rows:
        print(f"{name:<40}{n:>8,}")
    return 0


def image_classes(class_info) -> dict[str, int]:
    """patientId -> index of its class in kit.data.labels.CLASSES (the classifier's output order:
    0 = Lung Opacity), from the validated stage_2_detailed_class_info.csv table."""
    index = {name: i for i, name in enumerate(CLASSES)}
    return {str(pid): index[c] for pid, c in zip(class_info["patientId"], class_info["class"])}
