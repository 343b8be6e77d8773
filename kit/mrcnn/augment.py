"""Training-time augmentation for Mask R-CNN: the contract and an albumentations pipeline.

Contract: any callable ``aug(image uint8 HxWx3, masks bool HxWxN) -> (image, masks)`` of the
same shapes (kit.mrcnn.data recomputes the boxes from the returned masks).

Seeding: when the callable also accepts a ``seed`` keyword (named, or through ``**kwargs``), the
DataGenerator calls ``aug(image, masks, seed=s)`` with an int s derived from (SEED, epoch,
batch, slot); the callable must then make its random draws a function of s alone (reseed its
own generator from s, never touch a shared global one). Callables without ``seed`` are called
as ``aug(image, masks)`` and their randomness is their own (not reproducible across runs or
thread workers). Matterport's imgaug hook had no seed at all.
"""
from __future__ import annotations

import inspect
import random
import threading
from typing import Any, Callable

import numpy as np

Augmentation = Callable[..., tuple[np.ndarray, np.ndarray]]


def albumentations_augmentation(flip: float = 0.5, affine: float = 0.5, scale: float = 0.1,
                                translate: float = 0.06, rotate: float = 5.0,
                                brightness_contrast: float = 0.5, limit: float = 0.15,
                                blur: float = 0.2) -> Augmentation:
    """An augmentation callable from albumentations: flips, small affine, brightness/contrast, blur.

    Arguments are probabilities (``flip``, ``affine``, ``brightness_contrast``, ``blur``) and
    magnitudes: ``scale`` (fraction), ``translate`` (fraction of the side), ``rotate`` (degrees),
    ``limit`` (brightness/contrast fraction). Masks move with the image (nearest-neighbour).
    The callable takes an optional ``seed`` (see AlbumentationsAugmentation).
    """
    return AlbumentationsAugmentation(dict(flip=flip, affine=affine, scale=scale,
                                           translate=translate, rotate=rotate,
                                           brightness_contrast=brightness_contrast, limit=limit,
                                           blur=blur))


class AlbumentationsAugmentation:
    """``aug(image, masks, seed=None) -> (image, masks)`` with an albumentations Compose.

    Each thread builds its own Compose (albumentations transforms hold their random state), and
    a call with ``seed`` first gives all its transforms ONE generator seeded with it (Compose's
    own set_random_seed would give each transform the same stream, so flip and affine would
    always fire together): the output is then a function of (image, masks, seed) alone.
    """

    def __init__(self, params: dict[str, float]):
        self.params = dict(params)
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:      # picklable for process workers
        return {"params": self.params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["params"])

    def _compose(self) -> Any:
        transform = getattr(self._local, "transform", None)
        if transform is None:
            import albumentations as A

            p = self.params
            transform = self._local.transform = A.Compose([
                A.HorizontalFlip(p=p["flip"]),
                A.Affine(scale=(1 - p["scale"], 1 + p["scale"]),
                         translate_percent=(-p["translate"], p["translate"]),
                         rotate=(-p["rotate"], p["rotate"]), fill=0, fill_mask=0, p=p["affine"]),
                A.RandomBrightnessContrast(brightness_limit=p["limit"], contrast_limit=p["limit"],
                                           p=p["brightness_contrast"]),
                A.GaussianBlur(blur_limit=(3, 5), p=p["blur"]),
            ])
        return transform

    def __call__(self, image: np.ndarray, masks: np.ndarray,
                 seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        transform = self._compose()
        if seed is not None:
            transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        if masks.shape[-1] == 0:
            return transform(image=image)["image"], masks
        out = transform(image=image, mask=masks.astype(np.uint8))
        return out["image"], out["mask"].astype(bool)


def takes_seed(augmentation: Callable) -> bool:
    """Whether ``augmentation`` accepts a ``seed`` keyword (named or through **kwargs)."""
    try:
        params = inspect.signature(augmentation).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" and p.kind != p.POSITIONAL_ONLY or p.kind == p.VAR_KEYWORD
               for p in params)
