"""CIFAR ResNets of He et al. (2016), Section 4.2: ResNet-20 ... ResNet-1202.

A 3x3 convolution with 16 channels, three stages of n basic (two 3x3
convolutions) post-activation blocks with 16, 32 and 64 channels at
resolutions 32, 16 and 8, global average pooling and a dense classifier:
6n + 2 layers. Shortcuts are parameter-free ("option A": subsampling and
zero channels), so ResNet-20 has about 0.27M parameters as in the paper's
Table 6. BatchNorm follows the paper's Torch/Caffe defaults: epsilon 1e-5,
momentum 0.9.

Reference:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
    CVPR 2016, arXiv:1512.03385.
"""

import keras

from normzoo import naming
from normzoo.models import blocks

DEPTHS = (20, 32, 44, 56, 110, 1202)

_STAGE_STRIDES = (1, 2, 2)


def cifar_resnet(
    depth,
    *,
    norm="batch",
    num_classes=10,
    input_shape=(32, 32, 3),
    width=16,
    skipinit_alpha=None,
    synchronized_bn=False,
    classifier_activation=None,
    name=None,
):
    """Builds the CIFAR ResNet with `depth` = 6n + 2 layers.

    Args:
        depth: Number of layers, 6n + 2 for n >= 1 (20, 32, 44, 56, 110 and
            1202 are the paper's).
        norm: One of `normzoo.naming.NORMS`.
        num_classes: Size of the classifier; 0 for no classifier.
        input_shape: Channels-last input shape.
        width: Channels of the stem and the first stage (16 in the paper);
            the stages have width, 2 * width and 4 * width channels.
        skipinit_alpha: Initial SkipInit scalar (norm="skipinit" only).
        synchronized_bn: BatchNorm's `synchronized` (norm="batch" only).
        classifier_activation: Activation of the classifier; None: logits.
        name: Model name; defaults to f"resnet{depth}".

    Returns:
        A `keras.Model`.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"A CIFAR ResNet has 6n + 2 layers (20, 32, 44, ...); got depth={depth}.")
    blocks.check_integer("width", width, 1, "channels of the stem and the first stage")
    blocks.check_classifier(num_classes, classifier_activation)
    units_per_stage = (depth - 2) // 6
    normalization = blocks.Normalization(
        norm,
        epsilon=1e-5,
        momentum=0.9,
        synchronized=synchronized_bn,
        skipinit_alpha=skipinit_alpha,
    )

    inputs = blocks.model_input(input_shape)
    x = blocks.conv2d(
        inputs, width, 3, use_bias=normalization.use_bias("unnormalized", True), name=naming.STEM
    )
    x = blocks.relu(normalization.normalize(x, naming.STEM), name=f"{naming.STEM}_relu")
    strides = blocks.unit_strides([units_per_stage] * 3, _STAGE_STRIDES, "first")
    for stage, stage_strides in enumerate(strides):
        filters = width * 2**stage
        for unit, unit_stride in enumerate(stage_strides, start=1):
            x = blocks.residual_block(
                x,
                [(filters, 3, unit_stride), (filters, 3, 1)],
                preactivation=False,
                norm=normalization,
                conv_bias="unnormalized",
                shortcut="zero_pad",
                name=naming.block(stage + 2, unit),
            )
    outputs = blocks.classifier_head(
        x,
        preactivation=False,
        norm=normalization,
        num_classes=num_classes,
        classifier_activation=classifier_activation,
    )
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")
