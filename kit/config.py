"""Run configuration: frozen dataclasses, named presets, JSON round trip, ``--set`` overrides.

A run's ``config.json`` is this object; ``mrcnn_fields()`` gives the fields of the model's
Matterport-style config (``kit.mrcnn.config.config_from(cfg.mrcnn_fields())`` builds it), so the
base never imports the model.
Pixel sizes are those of the prepared (cached) image the model sees, unless said otherwise.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.errors import KitError


@dataclass(frozen=True)
class Stage:
    """One step of a training schedule (Matterport's ``model.train`` call)."""

    layers: str                 # heads | 3+ | 4+ | 5+ | all | a regex over layer names
    epochs: int                 # epochs in this stage (the schedule makes them cumulative)
    lr_factor: float = 1.0      # learning rate = RunConfig.learning_rate * lr_factor
    augment: bool = False       # apply the preset's augmentation in this stage


@dataclass(frozen=True)
class RunConfig:
    name: str
    backbone: str = "resnet50"              # resnet50 | resnet101
    image_size: int = 256                   # side of the prepared square image (multiple of 64)
    init: str = "coco"                      # coco | imagenet | none | path to a .h5 file
    stages: tuple[Stage, ...] = (Stage("heads", 2), Stage("all", 4, 0.1, True))
    learning_rate: float = 0.006
    warmup_steps: int = 0                   # linear lr ramp over the run's first steps (0: none)
    optimizer: str = "sgd"                  # sgd (Matterport, momentum 0.9) | adam
    images_per_gpu: int = 8
    steps_per_epoch: int = 0                # 0: one pass over the training images
    validation_steps: int = 0               # 0: one pass over the validation images
    val_loss: bool = True                   # validation-loss pass each epoch (val_map picks)
    n_val: int = 1500                       # validation images (a fraction on small data sets)
    split_seed: int = 0
    seed: int = 0                           # weights init, data order, augmentation, sampling
    folds: int = 0                          # >1: stratified patient folds; val = fold ``fold``
    fold: int = 0                           # which fold is validation (0 .. folds-1)
    rpn_anchor_scales: tuple[int, ...] = (16, 32, 64, 128, 256)
    rpn_anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    train_rois_per_image: int = 64
    rpn_train_anchors_per_image: int = 128
    pre_nms_limit: int = 2000
    post_nms_rois_training: int = 1000
    post_nms_rois_inference: int = 500
    max_gt_instances: int = 4
    top_down_pyramid_size: int = 256        # FPN channels (256 to load COCO weights)
    fc_layers_size: int = 1024              # classifier head width (1024 to load COCO weights)
    mask_pool_size: int = 14                # mask head input side; masks come out twice that
    detection_max_instances: int = 10
    detection_min_confidence: float = 0.05  # floor for RAW detections; thresholds are tuned later
    detection_nms_threshold: float = 0.1
    rpn_nms_threshold: float = 0.7
    weight_decay: float = 0.0001
    train_bn: bool = False                  # True for training from scratch (no init weights)
    bn_momentum: float = 0.99               # with train_bn: 0.9 lets short runs' statistics catch up
    mini_mask: bool = True
    image_classifier: bool = True           # 3-way image-level head (Lung Opacity / Not Normal / Normal)
    image_class_loss_weight: float = 1.0
    image_head_refit: int = 2000            # train images the head is refitted on after training (0: off)
    proposals_with_gt: bool = True          # append GT boxes to the proposals (False: Matterport)
    val_map_images: int = 0                 # val images the epoch-end mAP detects on (0: all)
    val_map_from: int = 1                   # first epoch scored with val_map (best.h5 from it)
    keep_checkpoints: int = 2               # newest epoch checkpoints kept (0: all, as Matterport)
    tta: str = "flip"                       # none | flip (horizontal flip, boxes fused by WBF)
    workers: int = 2
    mixed_precision: bool = False
    notes: str = ""
    data_dir: str = ""                      # set by train: the data set this run learned from

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    @property
    def schedule(self) -> list[tuple[Stage, int]]:
        """Each stage with its cumulative end epoch (Matterport's ``epochs`` argument)."""
        out, end = [], 0
        for stage in self.stages:
            end += stage.epochs
            out.append((stage, end))
        return out

    @property
    def augmented(self) -> bool:
        return any(s.augment for s in self.stages)

    # ---- JSON ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise KitError(f"unknown config keys {sorted(unknown)}")
        d["stages"] = tuple(Stage(**s) for s in d.get("stages", ()))
        for f in dataclasses.fields(cls):
            if f.name in d and isinstance(d[f.name], list):
                d[f.name] = tuple(d[f.name])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from kit.io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise KitError("run config not found", path=path) from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise KitError(f"not a valid run config: {exc}", path=path) from None

    # ---- overrides -------------------------------------------------------------------
    def with_overrides(self, items: list[str]) -> "RunConfig":
        """Apply ``KEY=VALUE`` strings (``--set``); values are parsed as JSON, else strings."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for item in items:
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise KitError(f"--set {item!r}: expected KEY=VALUE")
            if key not in fields:
                raise KitError(f"--set {item!r}: unknown key {key!r}; known keys: "
                               f"{', '.join(sorted(fields))}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            current = getattr(self, key)
            if key == "stages":
                try:
                    value = tuple(Stage(**s) for s in value)
                except TypeError as exc:
                    raise KitError(f"--set stages: {exc}; e.g. "
                                   "stages='[{\"layers\":\"heads\",\"epochs\":2}]'") from None
            elif isinstance(current, tuple):
                value = tuple(value) if isinstance(value, list) else (value,)
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise KitError(f"--set {item!r}: {key} takes true or false")
            elif isinstance(current, (int, float)) and not isinstance(current, bool):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise KitError(f"--set {item!r}: {key} takes a number")
                value = type(current)(value)
            changes[key] = value
        cfg = dataclasses.replace(self, **changes)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.image_size % 64:
            raise KitError(f"image_size {self.image_size} must be a multiple of 64")
        if self.backbone not in ("resnet50", "resnet101"):
            raise KitError(f"backbone {self.backbone!r}: choose resnet50 or resnet101")
        if len(self.rpn_anchor_scales) != 5:
            raise KitError("rpn_anchor_scales needs one scale per pyramid level (5: P2..P6)")
        if self.optimizer not in ("sgd", "adam"):
            raise KitError(f"optimizer {self.optimizer!r}: choose sgd or adam")
        if self.tta not in ("none", "flip"):
            raise KitError(f"tta {self.tta!r}: choose none or flip")
        if not self.stages:
            raise KitError("a schedule needs at least one stage")
        if self.folds == 1 or self.folds < 0:
            raise KitError(f"folds={self.folds}: use 0 (one train/val split) or 2 or more")
        if self.val_map_from < 1:
            raise KitError(f"val_map_from={self.val_map_from}: the first epoch val_map scores "
                           "(1 or more)")
        if self.warmup_steps < 0:
            raise KitError(f"warmup_steps={self.warmup_steps}: a number of steps (0: no ramp)")
        if self.image_head_refit < 0:
            raise KitError(f"image_head_refit={self.image_head_refit}: a number of training "
                           "images (0 turns the refit off)")
        if self.folds and not 0 <= self.fold < self.folds:
            raise KitError(f"fold={self.fold} must be in 0..{self.folds - 1} for folds={self.folds}")

    # ---- the model's config ------------------------------------------------------------
    def mrcnn_fields(self, gpu_count: int = 1) -> dict[str, Any]:
        """The Matterport-style model config's fields for this run (2 classes: background,
        opacity); ``kit.mrcnn.config.config_from`` turns them into a validated Config."""
        attrs = dict(
            NAME="pneumonia", NUM_CLASSES=2, BACKBONE=self.backbone,
            IMAGES_PER_GPU=self.images_per_gpu, GPU_COUNT=gpu_count,
            IMAGE_MIN_DIM=self.image_size, IMAGE_MAX_DIM=self.image_size,
            IMAGE_RESIZE_MODE="square",
            RPN_ANCHOR_SCALES=tuple(self.rpn_anchor_scales),
            RPN_ANCHOR_RATIOS=list(self.rpn_anchor_ratios),
            TRAIN_ROIS_PER_IMAGE=self.train_rois_per_image,
            RPN_TRAIN_ANCHORS_PER_IMAGE=self.rpn_train_anchors_per_image,
            PRE_NMS_LIMIT=self.pre_nms_limit,
            POST_NMS_ROIS_TRAINING=self.post_nms_rois_training,
            POST_NMS_ROIS_INFERENCE=self.post_nms_rois_inference,
            MAX_GT_INSTANCES=self.max_gt_instances,
            TOP_DOWN_PYRAMID_SIZE=self.top_down_pyramid_size,
            FPN_CLASSIF_FC_LAYERS_SIZE=self.fc_layers_size,
            MASK_POOL_SIZE=self.mask_pool_size, MASK_SHAPE=[2 * self.mask_pool_size] * 2,
            DETECTION_MAX_INSTANCES=self.detection_max_instances,
            DETECTION_MIN_CONFIDENCE=self.detection_min_confidence,
            DETECTION_NMS_THRESHOLD=self.detection_nms_threshold,
            DETECTION_BEST_FOREGROUND=True,     # raw detections: P(opacity) for every ROI
            RPN_NMS_THRESHOLD=self.rpn_nms_threshold,
            LEARNING_RATE=self.learning_rate, OPTIMIZER=self.optimizer.upper(),
            WEIGHT_DECAY=self.weight_decay, TRAIN_BN=self.train_bn, BN_MOMENTUM=self.bn_momentum,
            USE_MINI_MASK=self.mini_mask, MIXED_PRECISION=self.mixed_precision,
            KEEP_CHECKPOINTS=self.keep_checkpoints, TRAIN_ON_EMPTY_IMAGES=True,
            SEED=self.seed, IMAGE_CLASSES=3 if self.image_classifier else 0,
            IMAGE_CLASS_LOSS_WEIGHT=self.image_class_loss_weight,
            PROPOSALS_WITH_GT=self.proposals_with_gt,
        )
        if self.steps_per_epoch:
            attrs["STEPS_PER_EPOCH"] = self.steps_per_epoch
        if self.validation_steps:
            attrs["VALIDATION_STEPS"] = self.validation_steps
        return attrs


def _study(backbone: str, augment: bool) -> RunConfig:
    """The study's four set-ups: heads only from COCO vs complete training with augmentation."""
    short = "r50" if backbone == "resnet50" else "r101"
    if augment:
        stages = (Stage("heads", 2), Stage("4+", 4, 1.0, True), Stage("all", 6, 0.1, True))
    else:
        stages = (Stage("heads", 12),)
    return RunConfig(name=f"{short}-{'all-aug' if augment else 'heads'}", backbone=backbone,
                     image_size=512, init="coco", stages=stages, learning_rate=0.006,
                     images_per_gpu=4, rpn_anchor_scales=(32, 64, 128, 256, 512),
                     val_map_images=300,
                     notes="study configuration: " + ("complete training with augmentation"
                                                      if augment else "heads only, no augmentation"))


PRESETS: dict[str, RunConfig] = {
    # tests: the smallest model that still exercises every code path (seconds on a CPU)
    "tiny": RunConfig(
        name="tiny", image_size=64, init="none",
        stages=(Stage("heads", 1), Stage("all", 1, 0.5, True)),
        learning_rate=0.002, images_per_gpu=2, steps_per_epoch=1, validation_steps=1, n_val=4,
        val_loss=False,
        rpn_anchor_scales=(8, 16, 32, 64, 128), train_rois_per_image=8,
        rpn_train_anchors_per_image=32, pre_nms_limit=200, post_nms_rois_training=50,
        post_nms_rois_inference=50, detection_max_instances=5, workers=1, keep_checkpoints=1,
        notes="test preset: 64 px, one step per stage"),
    # the CPU demo on the embedded synthetic data (no COCO weights offline: from scratch)
    "demo": RunConfig(
        name="demo", image_size=128, init="none",
        stages=(Stage("all", 6), Stage("all", 4, 0.3), Stage("all", 2, 0.1, True)),
        learning_rate=0.0005, optimizer="adam", images_per_gpu=4, steps_per_epoch=40,
        validation_steps=5, n_val=80, val_loss=False, val_map_from=4,
        rpn_anchor_scales=(8, 16, 32, 64, 128), train_rois_per_image=16,
        rpn_train_anchors_per_image=64, pre_nms_limit=1000, post_nms_rois_training=200,
        post_nms_rois_inference=200, detection_max_instances=6, train_bn=True, bn_momentum=0.9,
        top_down_pyramid_size=128, fc_layers_size=256, mask_pool_size=7, workers=2,
        notes="CPU demo: 128 px, narrow heads, all layers from scratch with trained BatchNorm "
              "and Adam (SGD at lr 0.01 reached val mAP 0.03 in 480 steps), lr 5e-4 stepped "
              "down 1 -> 0.3 -> 0.1 (at 1e-3 seed 1 learned only after the first step down: "
              "test mAP 0.66; at 1e-3 throughout, val_map fell from 0.39 to 0.04 at epochs "
              "9-10), the last stage augmented"),
}
# the demo's schedule and cost on the hard films (demo-data --difficulty rsna): a validation set
# with about 200 positive images to tune on, val_map each epoch on a seeded 200 of them
PRESETS["demo-rsna"] = dataclasses.replace(
    PRESETS["demo"], name="demo-rsna", n_val=900, val_map_images=200, learning_rate=0.0003,
    val_loss=True, val_map_from=1,      # as its seeds were measured (README's lever table)
    notes="the demo preset on the hard films (data/demo-rsna): 900 val images (~200 positive), "
          "lr 3e-4 stepped down as in demo (at 1e-3 the detector only starts to learn once the "
          "lr steps down at epoch 7); seeds 0-2: tuned val mAP 0.170-0.180")
PRESETS.update({
    "r50-heads": _study("resnet50", augment=False),
    "r50-all-aug": _study("resnet50", augment=True),
    "r101-heads": _study("resnet101", augment=False),
    "r101-all-aug": _study("resnet101", augment=True),
    # Kaggle GPU defaults: 512 px, R101 from COCO, heads -> 4+ -> all, flip TTA
    "kaggle": RunConfig(
        name="kaggle", backbone="resnet101", image_size=512, init="coco",
        stages=(Stage("heads", 2), Stage("4+", 4, 1.0, True), Stage("all", 6, 0.1, True)),
        learning_rate=0.006, images_per_gpu=4, rpn_anchor_scales=(32, 64, 128, 256, 512),
        val_map_images=300, notes="Kaggle 2xT4 defaults"),
})


# one line per RunConfig field: what `python -m kit config` prints beside each value
FIELD_HELP: dict[str, str] = {
    "name": "preset name; the run folder is runs/<name>-<timestamp>",
    "backbone": "ResNet backbone: resnet50 | resnet101",
    "image_size": "side in pixels of the prepared square image the model sees (multiple of 64)",
    "init": "initial weights: coco | imagenet | none | path to a .h5 file",
    "stages": "training schedule: stages of {layers, epochs, lr_factor, augment}, in order",
    "learning_rate": "base learning rate (each stage multiplies it by its lr_factor)",
    "warmup_steps": "training steps over which the lr ramps up linearly at the start of a run "
                    "(0: none)",
    "optimizer": "sgd (momentum 0.9, as Matterport) | adam",
    "images_per_gpu": "images per batch on each GPU",
    "steps_per_epoch": "training steps per epoch (0: one pass over the training images)",
    "validation_steps": "validation-loss steps per epoch (0: one pass over the val images)",
    "val_loss": "compute the validation loss each epoch (plotted only: val_map picks the "
                "checkpoint; false saves a graph trace per stage and the steps)",
    "n_val": "validation images of the seeded split (20% when that is half the data or more)",
    "split_seed": "seed of the train/val split and of the folds",
    "seed": "seed of weight init, data order, augmentation and sampling",
    "folds": "0: one seeded train/val split; K >= 2: stratified patient folds",
    "fold": "with folds=K: which fold (0 .. K-1) is the validation set",
    "rpn_anchor_scales": "anchor side in pixels for each pyramid level P2..P6 (5 values)",
    "rpn_anchor_ratios": "anchor height/width ratios at every location",
    "train_rois_per_image": "ROIs per image fed to the classifier/mask heads in training",
    "rpn_train_anchors_per_image": "anchors per image the RPN loss is computed on",
    "pre_nms_limit": "top-scoring anchors kept before the proposal NMS",
    "post_nms_rois_training": "proposals kept after NMS in training",
    "post_nms_rois_inference": "proposals kept after NMS in inference",
    "max_gt_instances": "most ground-truth boxes used per image",
    "top_down_pyramid_size": "FPN channels (256 to load COCO weights)",
    "fc_layers_size": "width of the classifier head's fully connected layers (1024 for COCO)",
    "mask_pool_size": "mask head input side; masks come out twice that",
    "detection_max_instances": "most detections per image",
    "detection_min_confidence": "score floor of RAW detections (thresholds are tuned later)",
    "detection_nms_threshold": "NMS IoU among an image's final detections",
    "rpn_nms_threshold": "NMS IoU among RPN proposals",
    "weight_decay": "L2 weight decay",
    "train_bn": "train BatchNorm layers (true when training from scratch)",
    "bn_momentum": "BatchNorm moving-average momentum when train_bn is true",
    "mini_mask": "store ground-truth masks at a small fixed size (saves memory)",
    "image_classifier": "add the 3-way image-level head (Lung Opacity / Not Normal / Normal)",
    "image_class_loss_weight": "weight of the image-level head's loss",
    "image_head_refit": "train images the image head is refitted on after training (0: off)",
    "proposals_with_gt": "append ground-truth boxes to the proposals (false: as Matterport)",
    "val_map_images": "val images the epoch-end mAP detects on (0: all)",
    "val_map_from": "first epoch scored with val_map, and so a candidate for best.h5 (a "
                    "from-scratch run's first epochs never are)",
    "keep_checkpoints": "newest epoch checkpoints kept (0: all)",
    "tta": "test-time augmentation: none | flip (horizontal flip, boxes fused by WBF)",
    "workers": "data-loader worker threads",
    "mixed_precision": "float16 compute on GPUs",
    "notes": "free text saved with the run",
    "data_dir": "the data set the run learned from (set by train)",
}


def add_config_args(p) -> None:
    p.add_argument("--preset", default="demo", choices=list(PRESETS),
                   help="the preset to print (default: demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value before printing, as train does (repeatable)")


def format_config(cfg: RunConfig) -> str:
    """Every key of ``cfg`` with its value (JSON) and its one-line meaning."""
    d = cfg.to_dict()
    values = {k: json.dumps(v) for k, v in d.items()}
    width = max(map(len, d))
    vwidth = min(max(len(v) for v in values.values()), 28)
    lines = []
    for key, value in values.items():
        pad = value if len(value) <= vwidth else value + "\n" + " " * (width + vwidth + 4)
        lines.append(f"{key:<{width}}  {pad:<{vwidth}}  # {FIELD_HELP.get(key, '')}")
    return "\n".join(lines)


def run_config(args) -> int:
    """``config``: print a preset's every key, value and meaning."""
    print(format_config(get_preset(args.preset, args.set)))
    return 0


def get_preset(name: str, overrides: list[str] | None = None) -> RunConfig:
    if name not in PRESETS:
        raise KitError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.with_overrides(overrides) if overrides else cfg
