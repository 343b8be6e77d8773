"""The films of a run and the figures of one post-processing setting, for the live page.

Boxes are ``[x, y, w, h]`` (top-left, pixels of the original 1024-px frame) everywhere, as in
the raw tables; the page draws the prepared S-px image stretched over that frame (the frame
kit.infer.predict maps its detections to).

Every figure is computed by the kit's own code on the raw tables: ``PostProcess.apply`` (the
only place thresholds apply), ``score_dataset`` (competition mAP and the per-image scores) and
``prf_table`` (P/R/F1 at IoU 0.25/0.5/0.75). The per-image false and missed boxes use the
matching prf_table uses (kit.score.metric.match_predictions, by prediction) at IoU 0.5.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kit import paths
from kit.errors import KitError
from kit.score.metric import (BATCH_IMAGES, make_batch, match_predictions, prf_table,
                              score_dataset)
from kit.score.postprocess import PostProcess, nms_mask

SPLIT_FOLDERS = {"val": "train", "test": "test"}   # a film's split -> its cache / DICOM split
SHORT_CLASSES = {"Lung Opacity": "Lung Opacity", "No Lung Opacity / Not Normal": "Not Normal",
                 "Normal": "Normal"}
IMAGE_IOU = 0.5      # per-image false / missed boxes are counted at this IoU
MAX_UPLOADS = 20     # uploaded films kept in memory (the oldest goes first)
SETTING_FIELDS = tuple(PostProcess.__dataclass_fields__)

Preds = dict[str, tuple[np.ndarray, np.ndarray]]


def finite(value: float | None, digits: int = 6) -> float | None:
    """A float for JSON: None for NaN / None (JSON has no NaN), else rounded."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def settings_from(data: object) -> PostProcess:
    """A PostProcess from the page's JSON object (KitError names the bad field)."""
    if not isinstance(data, dict):
        raise KitError("settings must be a JSON object with the fields of postprocess.json")
    unknown = sorted(set(data) - set(SETTING_FIELDS))
    if unknown:
        raise KitError(f"unknown setting {unknown[0]!r}; the settings are "
                       f"{', '.join(SETTING_FIELDS)}")
    missing = [f for f in ("score_threshold", "image_threshold", "box_scale", "max_boxes")
               if f not in data]
    if missing:
        raise KitError(f"setting {missing[0]!r} is missing")
    for name, value in data.items():
        if value is None and name == "nms_iou":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise KitError(f"setting {name!r} must be a number, got {value!r}")
    if data["max_boxes"] != int(data["max_boxes"]):
        raise KitError(f"setting 'max_boxes' must be an integer, got {data['max_boxes']!r}")
    return PostProcess(**{**data, "max_boxes": int(data["max_boxes"])})


def box_rows(scores: np.ndarray, boxes: np.ndarray) -> list[list[float]]:
    """[[score, x, y, w, h], ...] rounded for the page."""
    scores = np.round(np.asarray(scores, np.float64).reshape(-1, 1), 4)
    return np.hstack([scores, np.round(np.asarray(boxes, np.float64).reshape(-1, 4), 1)]).tolist()


def image_counts(gt: Mapping[str, np.ndarray], preds: Preds, ids: Sequence[str],
                 iou: float = IMAGE_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image of ``ids``: (kept boxes, false boxes, missed GT boxes) at ``iou``, with the
    greedy matching of :func:`kit.score.metric.prf_table` (their sums are its fp and fn)."""
    kept, false, missed = (np.zeros(len(ids), np.int64) for _ in range(3))
    empty = (np.zeros(0), np.zeros((0, 4)))
    for start in range(0, len(ids), BATCH_IMAGES):
        chunk = ids[start:start + BATCH_IMAGES]
        batch = make_batch([gt[p] for p in chunk], [preds.get(p, empty) for p in chunk])
        tp = match_predictions(batch, np.array([iou]), by_prediction=True)[:, 0].sum(axis=-1)
        part = slice(start, start + len(chunk))
        kept[part], false[part], missed[part] = batch.n_pred, batch.n_pred - tp, batch.n_gt - tp
    return kept, false, missed


class Images:
    """A run's films as uint8 (S, S): from the prepared cache when it holds them, else decoded
    from the DICOM in <data_dir>/stage_2_{train,test}_images (the view never prepares a cache)."""

    def __init__(self, data_dir: Path, size: int):
        from kit.data.prepare import Cache, default_cache_dir

        self.data_dir, self.size = Path(data_dir), int(size)
        cache_dir = default_cache_dir(self.data_dir, self.size)
        self.cache = Cache(cache_dir) if (cache_dir / "cache.json").is_file() else None
        self.cached = set(self.cache.meta["patientId"]) if self.cache else set()

    @property
    def source(self) -> str:
        return f"prepared cache {self.cache.path}" if self.cache else f"DICOM in {self.data_dir}"

    def load(self, split: str, pid: str) -> np.ndarray:
        if pid in self.cached:
            return self.cache.load(pid)
        from kit.data import dicom
        from kit.data.prepare import SPLITS

        path = self.data_dir / SPLITS[SPLIT_FOLDERS[split]] / f"{pid}.dcm"
        return dicom.read_image(path, self.size)[0]


@dataclass
class Upload:
    """A DICOM opened on the page and the run's model's raw detections on it."""

    id: str
    name: str
    image: np.ndarray                  # uint8 (S, S)
    raw: pd.DataFrame                  # RAW_COLUMNS, 1024-px frame
    p_opacity: float | None
    seconds: float


class Films:
    """Validation films (ground truth + raw detections), test films (raw detections), uploads."""

    def __init__(self, *, name: str, ids: Sequence[str], gt: Mapping[str, np.ndarray],
                 raw_val: pd.DataFrame, tuned: PostProcess,
                 val_scores: Mapping[str, float] | None = None,
                 classes: Mapping[str, str] | None = None, test_ids: Sequence[str] = (),
                 raw_test: pd.DataFrame | None = None,
                 test_scores: Mapping[str, float] | None = None, images: Images | None = None):
        self.name, self.ids, self.tuned = name, list(ids), tuned
        self.gt = {pid: np.asarray(gt[pid], np.float64).reshape(-1, 4) for pid in self.ids}
        self._negative = np.array([len(self.gt[p]) == 0 for p in self.ids], bool)
        stray = ~raw_val["patientId"].isin(set(self.ids)).to_numpy()
        if stray.any():
            raise KitError(f"patientId {raw_val['patientId'].iloc[int(np.argmax(stray))]!r} of "
                           "raw_val.csv is not a validation image (val_ids.csv)")
        self.raw_val, self.val_scores = raw_val.reset_index(drop=True), val_scores
        self.classes = dict(classes or {})
        self.test_ids = list(test_ids)
        self._test_set = set(self.test_ids)
        self.raw_test = None if raw_test is None else raw_test.reset_index(drop=True)
        self.test_scores, self.images = test_scores, images
        self.uploads: dict[str, Upload] = {}
        self._n_uploads = 0
        self._nms: dict[tuple[str, float], pd.DataFrame] = {}   # (split, nms_iou) -> kept rows
        self._rows = {"val": self.raw_val.groupby("patientId", sort=False).indices,
                      "test": {} if self.raw_test is None
                      else self.raw_test.groupby("patientId", sort=False).indices}
        self.tuned_map = score_dataset(self.gt, tuned.apply(self.raw_val, val_scores)).map

    @classmethod
    def from_run(cls, run: Path) -> "Films":
        """Load a run folder: config.json, val_ids.csv, raw_val.csv (+ raw_val_images.csv),
        postprocess.json, raw_test.csv when present, the labels and class info of its data."""
        from kit.data.labels import (CLASSES, image_classes, read_class_info,
                                     read_sample_submission)
        from kit.report.report import val_ground_truth
        from kit.runs import image_scores_beside, raw_path, read_raw

        run = Path(run)
        cfg, ids, gt = val_ground_truth(run)
        data_dir = Path(cfg.data_dir or paths.default_data_dir())
        classes = {}
        if (data_dir / paths.CLASS_INFO).is_file():
            index = image_classes(read_class_info(data_dir / paths.CLASS_INFO))
            classes = {pid: SHORT_CLASSES[CLASSES[i]] for pid, i in index.items()}
        raw_test = test_scores = None
        if raw_path(run, "test").is_file():
            raw_test = read_raw(raw_path(run, "test"))
            test_scores = image_scores_beside(raw_path(run, "test"))
        sample = data_dir / paths.SAMPLE_SUBMISSION
        if sample.is_file():
            test_ids = read_sample_submission(sample)["patientId"].tolist()
        else:
            test_ids = list(dict.fromkeys(raw_test["patientId"])) if raw_test is not None else []
        return cls(name=run.name, ids=ids, gt=gt, raw_val=read_raw(raw_path(run, "val")),
                   val_scores=image_scores_beside(raw_path(run, "val")),
                   tuned=PostProcess.from_json(run / "postprocess.json"), classes=classes,
                   test_ids=test_ids, raw_test=raw_test, test_scores=test_scores,
                   images=Images(data_dir, cfg.image_size))

    # ---- what the page lists -------------------------------------------------------------
    def has(self, split: str, pid: str) -> bool:
        """Whether ``pid`` is a film of ``split`` (val, test or upload): the page's whitelist."""
        known = {"val": self.gt, "test": self._test_set, "upload": self.uploads}
        return pid in known.get(split, ())

    def film_list(self) -> list[dict]:
        """Every film, val first: split, id, class, ground truth, P(opacity), best raw score."""
        out = []
        for split, ids, scores in (("val", self.ids, self.val_scores),
                                   ("test", self.test_ids, self.test_scores)):
            raw = self.raw_val if split == "val" else self.raw_test
            top = {} if raw is None else raw.groupby("patientId")["score"].max().to_dict()
            for pid in ids:
                out.append({"split": split, "id": pid, "cls": self.classes.get(pid),
                            "gt": box_rows(np.zeros(len(self.gt[pid])), self.gt[pid])
                            if split == "val" else None,
                            "p": finite((scores or {}).get(pid), 4),
                            "top": finite(top.get(pid), 4)})
        out += [self.upload_film(u) for u in list(self.uploads.values())]
        return out

    @staticmethod
    def upload_film(u: Upload) -> dict:
        top = float(u.raw["score"].max()) if len(u.raw) else None
        return {"split": "upload", "id": u.id, "name": u.name, "cls": None, "gt": None,
                "p": finite(u.p_opacity, 4), "top": finite(top, 4), "seconds": round(u.seconds, 2)}

    def raw_boxes(self, split: str, pid: str) -> list[list[float]]:
        """A film's raw (unthresholded) detections, [[score, x, y, w, h], ...]."""
        if split == "upload":
            raw = self.uploads[pid].raw
        else:
            raw = self.raw_val if split == "val" else self.raw_test
            raw = raw.iloc[self._rows[split].get(pid, [])] if raw is not None else raw
        if raw is None or not len(raw):
            return []
        return box_rows(raw["score"].to_numpy(), raw[["x", "y", "w", "h"]].to_numpy())

    def add_upload(self, name: str, image: np.ndarray, raw: pd.DataFrame,
                   p_opacity: float | None, seconds: float) -> Upload:
        """Keep an opened film (its raw rows renamed to its id), dropping the oldest past
        MAX_UPLOADS."""
        self._n_uploads += 1
        pid = f"upload-{self._n_uploads}"
        upload = Upload(pid, name, image, raw.assign(patientId=pid).reset_index(drop=True),
                        p_opacity, seconds)
        self.uploads[upload.id] = upload
        while len(self.uploads) > MAX_UPLOADS:
            self.uploads.pop(next(iter(self.uploads)))
        return upload

    # ---- the figures of one setting -------------------------------------------------------
    def apply(self, post: PostProcess, split: str, raw: pd.DataFrame,
              scores: Mapping[str, float] | None) -> Preds:
        """``post.apply(raw, scores)``, with the NMS step taken from a per-table cache: NMS
        keeps each image's best box and the input order, and commutes with the other steps
        (as kit.score.tune uses), so a slider other than NMS IoU never reruns it."""
        if post.nms_iou is None or split == "upload":
            return post.apply(raw, scores)
        key = (split, post.nms_iou)
        survivors = self._nms.get(key)
        if survivors is None:
            if len(self._nms) >= 64:      # typed-in IoUs: keep the cache bounded
                self._nms.clear()
            codes = pd.factorize(raw["patientId"], sort=False)[0]
            keep = nms_mask(codes, raw["score"].to_numpy(np.float64),
                            raw[["x", "y", "w", "h"]].to_numpy(np.float64), post.nms_iou)
            survivors = self._nms[key] = raw[keep].reset_index(drop=True)
        return replace(post, nms_iou=None).apply(survivors, scores)

    def figures(self, post: PostProcess, test: bool = True) -> dict:
        """Validation figures of ``post`` (all by kit.score) and the kept boxes of every
        validation and opened film, and of every test film unless ``test`` is False."""
        start = time.perf_counter()
        kept = self.apply(post, "val", self.raw_val, self.val_scores)
        score = score_dataset(self.gt, kept)
        prf = prf_table(self.gt, kept)
        n_kept, false, missed = image_counts(self.gt, kept, self.ids)
        figures = {
            "map": finite(score.map), "tuned_map": finite(self.tuned_map),
            "images": score.n_images, "excluded": score.n_excluded,
            "prf": [{"iou": t, **{k: finite(v) if isinstance(v, float) else v
                                  for k, v in row.items()}} for t, row in prf.items()],
            "images_with_false_box": int((false > 0).sum()),
            "negatives_with_box": int(((n_kept > 0) & self._negative).sum()),
            "images_with_missed_box": int((missed > 0).sum()),
            "boxes": int(n_kept.sum()), "iou_per_image": IMAGE_IOU}
        val = {"score": [finite(score.per_image[p], 4) for p in self.ids],
               "kept": n_kept.tolist(), "false": false.tolist(), "missed": missed.tolist()}
        val_ms = (time.perf_counter() - start) * 1000
        boxes = {"val": {p: box_rows(*kept[p]) for p in kept}}
        notes = []
        sources = [("test", self.raw_test if test else None, self.test_scores)]
        sources += [("upload", u.raw, None if u.p_opacity is None else {u.id: u.p_opacity})
                    for u in list(self.uploads.values())]
        for split, raw, scores in sources:
            if raw is None:
                continue
            try:
                found = self.apply(post, split, raw, scores)
            except KitError as exc:       # e.g. a classifier gate on films without image scores
                notes.append(f"{split} boxes not shown: {exc}")
                continue
            boxes.setdefault(split, {}).update({p: box_rows(*found[p]) for p in found})
        return {"settings": asdict(post), "changed": changed_fields(post, self.tuned),
                "figures": figures, "val": val, "boxes": boxes, "notes": notes,
                "val_ms": round(val_ms, 1),
                "ms": round((time.perf_counter() - start) * 1000, 1)}


def changed_fields(post: PostProcess, tuned: PostProcess) -> list[dict]:
    """The settings of ``post`` that differ from ``tuned``: [{field, tuned, now}, ...]."""
    a, b = asdict(tuned), asdict(post)
    return [{"field": k, "tuned": a[k], "now": b[k]} for k in SETTING_FIELDS if a[k] != b[k]]
