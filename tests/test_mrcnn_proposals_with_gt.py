"""config.PROPOSALS_WITH_GT on the real training graph: box and mask heads learn from step 1."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from kit.mrcnn import utils  # noqa: E402
from kit.mrcnn.data import DataGenerator  # noqa: E402
from kit.mrcnn.model import MaskRCNN, anchors_of  # noqa: E402
from kit.mrcnn.training import layer_regex, make_optimizer  # noqa: E402
from test_mrcnn_training import _boxes_dataset, _model_config  # noqa: E402

BOX = (30, 30, 33, 33)     # 3x3 px: at most 9/64 IoU with the smallest (8 px) anchors
HEAD_LAYERS = ["mrcnn_bbox_fc", "mrcnn_mask_conv1", "mrcnn_mask_conv4", "mrcnn_mask_bn2",
               "mrcnn_mask_deconv", "mrcnn_mask"]


def _head_weights(km) -> dict[str, list[np.ndarray]]:
    return {name: [w.copy() for w in km.get_layer(name).get_weights()] for name in HEAD_LAYERS}


def _unchanged(a, b) -> list[str]:
    return [n for n in a if all(np.array_equal(x, y) for x, y in zip(a[n], b[n]))]


@pytest.mark.slow
def test_gt_boxes_in_proposals_give_box_and_mask_gradients_when_proposals_miss(tmp_path):
    config = _model_config(WEIGHT_DECAY=0.0)     # no L2: only the losses move a weight
    anchors = np.clip(anchors_of(config), 0, 64)
    assert utils.compute_overlaps(anchors, np.array([BOX])).max() < 0.2
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", config, tmp_path)
    km = model.keras_model
    targets = km.get_layer("proposal_targets")
    assert targets.proposals_with_gt is False                       # Matterport by default
    rpn_bbox = km.get_layer("rpn_model").get_layer("rpn_bbox_pred")
    rpn_bbox.set_weights([np.zeros_like(w) for w in rpn_bbox.get_weights()])   # proposals = anchors
    (batch,) = DataGenerator(_boxes_dataset([[BOX]]), config, shuffle=False)[0]
    assert batch["input_gt_boxes"][0, 0].tolist() == list(BOX)
    model.set_trainable(layer_regex("heads"))

    def step():
        km.compile(optimizer=make_optimizer(config, 0.02), jit_compile=False)   # (re)trace
        before = _head_weights(km)
        logs = km.train_on_batch(batch, return_dict=True)
        return logs, before, _head_weights(km)

    logs, before, after = step()
    assert logs["mrcnn_bbox_loss"] == 0.0 and logs["mrcnn_mask_loss"] == 0.0
    assert _unchanged(before, after) == HEAD_LAYERS      # no positive ROI: no gradient at all
    targets.proposals_with_gt = True
    logs, before, after = step()
    assert logs["mrcnn_bbox_loss"] > 0.0 and logs["mrcnn_mask_loss"] > 0.0   # the gt box is a ROI
    assert _unchanged(before, after) == []
