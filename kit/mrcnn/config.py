"""Mask R-CNN configuration with Matterport's field names and defaults.

Subclass ``Config`` and override class attributes (``NAME = "rsna"``, ``NUM_CLASSES = 2``...).
Derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE, BACKBONE_SHAPES) are properties, so they
always follow the fields they come from. ``to_dict()``/``from_dict()`` round-trip through JSON so a
run's config.json rebuilds the same model. Units: pixels of the molded (resized + padded) image.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

RESIZE_MODES = ("none", "square", "pad64", "crop")
IMAGE_CLASS_LOSS = "kit_image_class_loss"   # loss of the image-level head (IMAGE_CLASSES > 0)
OPTIMIZERS = ("SGD", "ADAM")
BACKBONES = ("resnet50", "resnet101")


class Config:
    """Base configuration; every UPPER_CASE class attribute is a field."""

    NAME: str | None = None                  # run/checkpoint name, e.g. "rsna"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50
    KEEP_CHECKPOINTS = 0                     # keep only the newest N epoch checkpoints (0: all)

    BACKBONE = "resnet101"                   # "resnet50" | "resnet101"
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]    # px of the molded image per feature cell, P2..P6
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256

    NUM_CLASSES = 1                          # including background; must be set to >= 2

    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)   # anchor side in px, one per pyramid level
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]               # width / height
    RPN_ANCHOR_STRIDE = 1                         # in feature-map cells
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)               # (height, width) of the stored instance masks

    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])   # RGB, subtracted by mold_image

    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]
    MAX_GT_INSTANCES = 100

    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    DETECTION_BEST_FOREGROUND = False        # True: score = best object class even if background wins

    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.0,
        "rpn_bbox_loss": 1.0,
        "mrcnn_class_loss": 1.0,
        "mrcnn_bbox_loss": 1.0,
        "mrcnn_mask_loss": 1.0,
    }
    USE_RPN_ROIS = True
    TRAIN_BN = False                         # False: BatchNorm moving statistics stay frozen
    BN_MOMENTUM = 0.99                       # moving-statistics momentum (used with TRAIN_BN)
    GRADIENT_CLIP_NORM = 5.0
    OPTIMIZER = "SGD"                        # SGD (Matterport: momentum LEARNING_MOMENTUM) | ADAM

    # RSNA additions
    TRAIN_ON_EMPTY_IMAGES = True             # keep images without boxes in training batches
    # SEED int: data order, augmentation, RPN anchor and ROI sampling are functions of (SEED,
    # epoch, image); None: drawn from NumPy's/Python's global RNG (keras.utils.set_random_seed
    # fixes those). Weight init is the caller's: keras.utils.set_random_seed before building.
    SEED = None
    IMAGE_CLASSES = 0                        # >= 2: image-level head (kit_image_*); 0: off
    IMAGE_CLASS_LOSS_WEIGHT = 1.0            # weight of kit_image_class_loss (not in LOSS_WEIGHTS)
    PROPOSALS_WITH_GT = False                # True: GT boxes join the proposals (torchvision)
    MIXED_PRECISION = False

    # ---- derived values ----
    @property
    def MAX_POSITIVE_ROIS(self) -> int:
        """Most positive ROIs a training image gets (they come first in the sampled ROIs)."""
        return int(self.TRAIN_ROIS_PER_IMAGE * self.ROI_POSITIVE_RATIO)

    @property
    def TRAINING_LOSS_WEIGHTS(self) -> dict[str, float]:
        """Every loss of the training model, in output order, with its weight: LOSS_WEIGHTS
        (Matterport's five) then kit_image_class_loss: IMAGE_CLASS_LOSS_WEIGHT if IMAGE_CLASSES."""
        weights = {name: float(self.LOSS_WEIGHTS[name]) for name in Config.LOSS_WEIGHTS}
        if self.IMAGE_CLASSES:
            weights[IMAGE_CLASS_LOSS] = float(self.IMAGE_CLASS_LOSS_WEIGHT)
        return weights

    @property
    def BATCH_SIZE(self) -> int:
        return int(self.IMAGES_PER_GPU * self.GPU_COUNT)

    @property
    def IMAGE_SHAPE(self) -> np.ndarray:
        """[H, W, C] of the molded image the graph is built for."""
        side = self.IMAGE_MIN_DIM if self.IMAGE_RESIZE_MODE == "crop" else self.IMAGE_MAX_DIM
        return np.array([side, side, self.IMAGE_CHANNEL_COUNT])

    @property
    def IMAGE_META_SIZE(self) -> int:
        """id + original shape (3) + molded shape (3) + window (4) + scale + active class ids."""
        return 1 + 3 + 3 + 4 + 1 + int(self.NUM_CLASSES)

    @property
    def BACKBONE_SHAPES(self) -> np.ndarray:
        """(levels, 2) feature-map [height, width] per pyramid level P2..P6."""
        h, w = int(self.IMAGE_SHAPE[0]), int(self.IMAGE_SHAPE[1])
        return np.array([[math.ceil(h / s), math.ceil(w / s)] for s in self.BACKBONE_STRIDES])

    # ---- API ----
    @classmethod
    def field_names(cls) -> list[str]:
        """All UPPER_CASE fields (not the derived properties), sorted."""
        names = {n for klass in cls.__mro__ for n in vars(klass) if n.isupper()}
        return sorted(names - set(cls.derived_names()))

    @classmethod
    def derived_names(cls) -> list[str]:
        """The UPPER_CASE properties: computed from the fields, never stored or loaded."""
        return sorted({n for klass in cls.__mro__ for n, v in vars(klass).items()
                       if n.isupper() and isinstance(v, property)})

    def validate(self) -> "Config":
        """Raise ValueError naming the field if the configuration cannot build a model."""
        h, w = int(self.IMAGE_SHAPE[0]), int(self.IMAGE_SHAPE[1])
        if h % 64 or w % 64:
            raise ValueError(f"IMAGE_SHAPE {h}x{w}: height and width must be divisible by 64 "
                             f"(set IMAGE_MAX_DIM/IMAGE_MIN_DIM to a multiple of 64)")
        if self.NUM_CLASSES < 2:
            raise ValueError(f"NUM_CLASSES={self.NUM_CLASSES}: must be >= 2 (background + classes)")
        if len(self.RPN_ANCHOR_SCALES) != len(self.BACKBONE_STRIDES):
            raise ValueError(f"RPN_ANCHOR_SCALES has {len(self.RPN_ANCHOR_SCALES)} scales but there "
                             f"are {len(self.BACKBONE_STRIDES)} pyramid levels (BACKBONE_STRIDES): "
                             "give exactly one anchor scale per level")
        if self.BACKBONE not in BACKBONES:
            raise ValueError(f"BACKBONE={self.BACKBONE!r}: choose one of {BACKBONES}")
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            raise ValueError(f"IMAGE_RESIZE_MODE={self.IMAGE_RESIZE_MODE!r}: choose one of "
                             f"{RESIZE_MODES}")
        if self.OPTIMIZER not in OPTIMIZERS:
            raise ValueError(f"OPTIMIZER={self.OPTIMIZER!r}: choose one of {OPTIMIZERS}")
        if IMAGE_CLASS_LOSS in self.LOSS_WEIGHTS:
            raise ValueError(f"LOSS_WEIGHTS[{IMAGE_CLASS_LOSS!r}]: set IMAGE_CLASS_LOSS_WEIGHT "
                             "instead (LOSS_WEIGHTS holds Matterport's five losses)")
        if set(self.LOSS_WEIGHTS) != set(Config.LOSS_WEIGHTS):
            raise ValueError(f"LOSS_WEIGHTS keys must be {sorted(Config.LOSS_WEIGHTS)}")
        if not isinstance(self.IMAGE_CLASSES, (int, np.integer)) or self.IMAGE_CLASSES == 1 \
                or self.IMAGE_CLASSES < 0:
            raise ValueError(f"IMAGE_CLASSES={self.IMAGE_CLASSES!r}: 0 (no image head) or an "
                             "int >= 2 (classes of the image-level softmax)")
        if self.SEED is not None and (not isinstance(self.SEED, (int, np.integer))
                                      or self.SEED < 0):
            raise ValueError(f"SEED={self.SEED!r}: None or an int >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (numpy arrays and tuples become lists)."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """A config whose fields come from ``values`` (as written by to_dict).

        Derived names are ignored; unknown names raise ValueError. Values take the type of the
        class default (list -> numpy array / tuple) so the result equals the original config.
        """
        cfg = cls()
        fields, derived = set(cls.field_names()), set(cls.derived_names())
        for name, value in values.items():
            if name in derived:
                continue
            if name not in fields:
                raise ValueError(f"config field {name!r} is unknown to {cls.__name__}")
            default = getattr(cls, name)
            if isinstance(default, np.ndarray):
                value = np.array(value, dtype=default.dtype)
            elif isinstance(default, tuple):
                value = tuple(value)
            setattr(cfg, name, value)
        return cfg

    def display(self) -> str:
        """Print and return every field and derived value, one per line."""
        lines = ["Configurations:"]
        for name in sorted(self.field_names() + self.derived_names()):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            lines.append(f"{name:30} {value}")
        text = "\n".join(lines)
        print(text)
        return text


def config_from(fields: dict[str, Any], name: str = "RSNAConfig") -> Config:
    """A validated Config subclass instance with ``fields`` (e.g. ``RunConfig.mrcnn_fields()``)."""
    cfg = type(name, (Config,), dict(fields))()
    cfg.validate()
    return cfg
