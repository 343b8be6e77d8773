"""kit.mrcnn.config: the kit's additions (seed, image head, GT proposals) validate, round-trip."""
from __future__ import annotations

import json

import pytest

from kit.mrcnn.config import IMAGE_CLASS_LOSS, Config


class Small(Config):
    NAME = "small"
    NUM_CLASSES = 2


def test_additions_default_to_matterport_behaviour():
    cfg = Small().validate()
    assert (cfg.SEED, cfg.IMAGE_CLASSES, cfg.PROPOSALS_WITH_GT) == (None, 0, False)
    assert list(cfg.TRAINING_LOSS_WEIGHTS) == ["rpn_class_loss", "rpn_bbox_loss",
                                               "mrcnn_class_loss", "mrcnn_bbox_loss",
                                               "mrcnn_mask_loss"]


def test_image_head_adds_its_loss_weight_last_and_only_when_enabled():
    cfg = Small()
    cfg.IMAGE_CLASSES, cfg.IMAGE_CLASS_LOSS_WEIGHT = 3, 0.5
    cfg.LOSS_WEIGHTS = {**Config.LOSS_WEIGHTS, "mrcnn_mask_loss": 2.0}
    weights = cfg.validate().TRAINING_LOSS_WEIGHTS
    assert list(weights)[-1] == IMAGE_CLASS_LOSS == "kit_image_class_loss"
    assert weights[IMAGE_CLASS_LOSS] == 0.5 and weights["mrcnn_mask_loss"] == 2.0
    assert len(weights) == 6
    data = json.loads(json.dumps(cfg.to_dict()))
    assert "TRAINING_LOSS_WEIGHTS" not in data                 # derived, never stored
    again = Small.from_dict(data)
    assert again.IMAGE_CLASSES == 3 and again.TRAINING_LOSS_WEIGHTS == weights


@pytest.mark.parametrize("field,value,message", [
    ("IMAGE_CLASSES", 1, "IMAGE_CLASSES=1: 0 .* or an int >= 2"),
    ("IMAGE_CLASSES", -2, "IMAGE_CLASSES=-2"),
    ("IMAGE_CLASSES", 2.5, "IMAGE_CLASSES=2.5"),
    ("SEED", -1, "SEED=-1: None or an int >= 0"),
    ("SEED", "7", "SEED='7'"),
    ("LOSS_WEIGHTS", {**Config.LOSS_WEIGHTS, IMAGE_CLASS_LOSS: 1.0},
     "set IMAGE_CLASS_LOSS_WEIGHT instead"),
])
def test_bad_additions_are_refused_naming_the_field(field, value, message):
    cfg = Small()
    cfg.IMAGE_CLASSES = 3                   # even with the head on, the weight lives apart
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        cfg.validate()
