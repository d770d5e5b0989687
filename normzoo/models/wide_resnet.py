"""Wide-ResNets WRN-n-k of Zagoruyko & Komodakis (2016).

A 3x3 convolution with 16 channels, three stages of N = (n - 4) / 6
pre-activation basic blocks (norm-ReLU-conv3x3-norm-ReLU-[dropout]-conv3x3)
with 16k, 32k and 64k channels at strides 1, 2, 2, a final norm + ReLU,
global average pooling and a dense classifier. Shortcuts are identities, or
1x1 projections of the pre-activation where the channels change. As in the
paper's code, no convolution has a bias when the network normalizes, and
BatchNorm uses epsilon 1e-5 and momentum 0.9. WRN-28-10 has about 36.5M
parameters, WRN-16-4 about 2.7M.

Reference:
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016,
    arXiv:1605.07146.
"""

import keras

from normzoo import naming
from normzoo.models import blocks

_STAGE_STRIDES = (1, 2, 2)


def check_depth_and_width(depth, widen_factor):
    """Raises ValueError unless WRN-`depth`-`widen_factor` exists."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"A Wide-ResNet has depth 6N + 4 with N >= 1 (10, 16, 22, 28, ...); got {depth}."
        )
    if int(widen_factor) != widen_factor or widen_factor < 1:
        raise ValueError(
            f"The widen factor of a Wide-ResNet is an integer >= 1; got {widen_factor}."
        )


def num_blocks(depth):
    """The number of residual blocks of WRN-`depth`-k: three stages of
    (depth - 4) / 6 (the d of SkipInit's alpha <= 1/sqrt(d))."""
    return len(_STAGE_STRIDES) * ((depth - 4) // 6)


def wide_resnet(
    depth,
    widen_factor,
    *,
    norm="batch",
    num_classes=10,
    input_shape=(32, 32, 3),
    dropout_rate=0.0,
    skipinit_alpha=None,
    synchronized_bn=False,
    classifier_activation=None,
    name=None,
):
    """Builds WRN-`depth`-`widen_factor`.

    Args:
        depth: n = 6N + 4 with N >= 1 blocks per stage (10, 16, 22, 28, 40,
            ..., 1000).
        widen_factor: k >= 1.
        norm: One of `normzoo.naming.NORMS`.
        num_classes: Size of the classifier; 0 for no classifier.
        input_shape: Channels-last input shape.
        dropout_rate: Dropout between the two convolutions of each block
            (0.3 in some of the paper's runs); 0 adds no layer.
        skipinit_alpha: Initial SkipInit scalar (norm="skipinit" only).
        synchronized_bn: BatchNorm's `synchronized` (norm="batch" only).
        classifier_activation: Activation of the classifier; None: logits.
        name: Model name; defaults to f"wrn_{depth}_{widen_factor}".

    Returns:
        A `keras.Model`.
    """
    check_depth_and_width(depth, widen_factor)
    blocks.check_classifier(num_classes, classifier_activation)
    blocks.check_number(
        "dropout_rate", dropout_rate, "the fraction of units dropped", minimum=0, below=1
    )
    units_per_stage = (depth - 4) // 6
    normalization = blocks.Normalization(
        norm,
        epsilon=1e-5,
        momentum=0.9,
        synchronized=synchronized_bn,
        skipinit_alpha=skipinit_alpha,
    )

    inputs = blocks.model_input(input_shape)
    x = blocks.conv2d(
        inputs, 16, 3, use_bias=normalization.use_bias("never", True), name=naming.STEM
    )
    strides = blocks.unit_strides([units_per_stage] * 3, _STAGE_STRIDES, "first")
    for stage, stage_strides in enumerate(strides):
        filters = 16 * widen_factor * 2**stage
        for unit, unit_stride in enumerate(stage_strides, start=1):
            x = blocks.residual_block(
                x,
                [(filters, 3, unit_stride), (filters, 3, 1)],
                preactivation=True,
                norm=normalization,
                conv_bias="never",
                dropout_rate=dropout_rate,
                name=naming.block(stage + 2, unit),
            )
    outputs = blocks.classifier_head(
        x,
        preactivation=True,
        norm=normalization,
        num_classes=num_classes,
        classifier_activation=classifier_activation,
    )
    return keras.Model(inputs, outputs, name=name or f"wrn_{depth}_{widen_factor}")
