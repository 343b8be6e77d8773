"""ResNet50/101 backbone and Feature Pyramid Network with Matterport's layer names.

Layer names follow Matterport (conv1, bn_conv1, res{stage}{block}_branch{2a,2b,2c,1},
bn{stage}{block}_branch..., fpn_c5p5 ... fpn_p6) so mask_rcnn_coco.h5 loads by name.
Stage 4 has blocks b..f (ResNet50) or b..w (ResNet101).
"""
from __future__ import annotations

import keras
from keras import layers as KL

STAGE4_BLOCKS = {"resnet50": 5, "resnet101": 22}   # identity blocks after res4a


@keras.saving.register_keras_serializable(package="kit.mrcnn")
class BatchNorm(KL.BatchNormalization):
    """BatchNormalization whose moving statistics stay frozen unless ``train_bn``.

    Keras 3 overrides a ``training=False`` passed at graph-building time when the model later
    runs with training=True; this subclass decides inside ``call`` instead. With train_bn=False
    the layer always normalises with its moving mean/variance (gamma/beta still follow the
    layer's ``trainable`` flag, as in Matterport).
    """

    def __init__(self, train_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.train_bn = bool(train_bn)

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training if self.train_bn else False, mask=mask)

    def get_config(self) -> dict:
        return {**super().get_config(), "train_bn": self.train_bn}


def _block(x, kernel_size: int, filters: tuple[int, int, int], stage: int, block: str,
           train_bn: bool, strides: int | None = None, bn_momentum: float = 0.99):
    """Bottleneck block; with ``strides`` it is a conv block (projection shortcut)."""
    conv, bn = f"res{stage}{block}_branch", f"bn{stage}{block}_branch"
    f1, f2, f3 = filters
    shortcut = x
    y = KL.Conv2D(f1, 1, strides=strides or 1, name=conv + "2a")(x)
    y = KL.Activation("relu")(BatchNorm(train_bn, momentum=bn_momentum, name=bn + "2a")(y))
    y = KL.Conv2D(f2, kernel_size, padding="same", name=conv + "2b")(y)
    y = KL.Activation("relu")(BatchNorm(train_bn, momentum=bn_momentum, name=bn + "2b")(y))
    y = KL.Conv2D(f3, 1, name=conv + "2c")(y)
    y = BatchNorm(train_bn, momentum=bn_momentum, name=bn + "2c")(y)
    if strides is not None:
        shortcut = KL.Conv2D(f3, 1, strides=strides, name=conv + "1")(x)
        shortcut = BatchNorm(train_bn, momentum=bn_momentum, name=bn + "1")(shortcut)
    y = KL.Add()([y, shortcut])
    return KL.Activation("relu", name=f"res{stage}{block}_out")(y)


def resnet_graph(input_image, architecture: str, train_bn: bool = False,
                 bn_momentum: float = 0.99) -> list:
    """[C1, C2, C3, C4, C5] feature maps (strides 2, 4, 8, 16, 32) of a ResNet.

    ``bn_momentum`` matters only with ``train_bn``: lower it (e.g. 0.9) for short runs from
    scratch so the moving statistics used at inference catch up with the weights.
    """
    if architecture not in STAGE4_BLOCKS:
        raise ValueError(f"backbone {architecture!r}: choose one of {list(STAGE4_BLOCKS)}")
    x = KL.ZeroPadding2D(3)(input_image)
    x = KL.Conv2D(64, 7, strides=2, name="conv1")(x)
    x = KL.Activation("relu")(BatchNorm(train_bn, momentum=bn_momentum, name="bn_conv1")(x))
    c1 = x = KL.MaxPooling2D(3, strides=2, padding="same")(x)
    stages = [(2, (64, 64, 256), 2, 1), (3, (128, 128, 512), 3, 2),
              (4, (256, 256, 1024), STAGE4_BLOCKS[architecture], 2),
              (5, (512, 512, 2048), 2, 2)]
    outputs = [c1]
    for stage, filters, identity_blocks, strides in stages:
        x = _block(x, 3, filters, stage, "a", train_bn, strides=strides, bn_momentum=bn_momentum)
        for i in range(identity_blocks):
            x = _block(x, 3, filters, stage, chr(ord("b") + i), train_bn, bn_momentum=bn_momentum)
        outputs.append(x)
    return outputs


def fpn_graph(c2, c3, c4, c5, size: int) -> list:
    """Feature pyramid [P2, P3, P4, P5, P6], ``size`` channels each (TOP_DOWN_PYRAMID_SIZE)."""
    p5 = KL.Conv2D(size, 1, name="fpn_c5p5")(c5)
    p4 = KL.Add(name="fpn_p4add")([KL.UpSampling2D(2, name="fpn_p5upsampled")(p5),
                                   KL.Conv2D(size, 1, name="fpn_c4p4")(c4)])
    p3 = KL.Add(name="fpn_p3add")([KL.UpSampling2D(2, name="fpn_p4upsampled")(p4),
                                   KL.Conv2D(size, 1, name="fpn_c3p3")(c3)])
    p2 = KL.Add(name="fpn_p2add")([KL.UpSampling2D(2, name="fpn_p3upsampled")(p3),
                                   KL.Conv2D(size, 1, name="fpn_c2p2")(c2)])
    pyramid = [KL.Conv2D(size, 3, padding="same", name=f"fpn_p{i}")(p)
               for i, p in zip((2, 3, 4, 5), (p2, p3, p4, p5))]
    p6 = KL.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(pyramid[3])
    return pyramid + [p6]
