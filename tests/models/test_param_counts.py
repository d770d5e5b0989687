"""Parameter counts against keras.applications, published numbers and the
papers' architectures counted by hand."""

import keras
import numpy as np
import pytest

from normzoo import models

# (keras.applications constructor, keras.io's published size in millions).
# ResNet50 and ResNet50V2 are compared exactly, weights and outputs too, in
# test_layouts.
_KERAS_APPLICATIONS = {
    "resnet101": (keras.applications.ResNet101, 44.7),
    "resnet152": (keras.applications.ResNet152, 60.4),
    "resnet101v2": (keras.applications.ResNet101V2, 44.7),
    "resnet152v2": (keras.applications.ResNet152V2, 60.4),
}


@pytest.mark.parametrize("name", list(_KERAS_APPLICATIONS))
def test_keras_layout_has_the_parameter_count_of_keras_applications(name):
    constructor, published_millions = _KERAS_APPLICATIONS[name]
    count = models.build(name, norm="batch", layout="keras").count_params()
    assert count == constructor(weights=None).count_params()
    assert round(count / 1e6, 1) == published_millions


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _cifar_resnet_count(depth, classes=10):
    # Every 3x3 convolution without bias, followed by a BatchNorm (gamma,
    # beta, moving mean, moving variance); option-A shortcuts have no
    # parameters; a dense classifier on 64 channels.
    n = (depth - 2) // 6
    convs = [(3, 16)]
    channels = 16
    for width in (16, 32, 64):
        for _ in range(n):
            convs += [(channels, width), (width, width)]
            channels = width
    return sum(9 * i * o + 4 * o for i, o in convs) + 64 * classes + classes


def test_cifar_resnets_count_as_he_et_al():
    model = models.build("resnet20")
    assert model.count_params() == _cifar_resnet_count(20)
    # "0.27M" in He et al. (2016), Table 6.
    assert round(model.count_params() / 1e6, 2) == 0.27
    assert models.build("resnet56").count_params() == _cifar_resnet_count(56)


def _wide_resnet_trainable_count(depth, k, norm="batch", classes=10):
    # Pre-activation blocks: a norm on each block input and between the two
    # 3x3 convolutions, 1x1 projections where the width changes, a final
    # norm. With normalization: gamma and beta per channel, no convolution
    # bias; without: a bias on every convolution (and one SkipInit scalar
    # per block).
    normalized = norm in ("batch", "layer")

    def conv(size, inputs, outputs):
        return size * size * inputs * outputs + (0 if normalized else outputs)

    def norm_params(channels):
        return 2 * channels if normalized else 0

    n = (depth - 4) // 6
    count = conv(3, 3, 16)
    channels = 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            count += (
                norm_params(channels)
                + conv(3, channels, width)
                + norm_params(width)
                + conv(3, width, width)
            )
            if channels != width:
                count += conv(1, channels, width)
            if norm == "skipinit":
                count += 1
            channels = width
    return count + norm_params(channels) + channels * classes + classes


@pytest.mark.parametrize(
    "depth, k, published_millions",
    # Zagoruyko & Komodakis (2016), Tables 4 and 6.
    [(28, 10, 36.5), (16, 8, 11.0), (40, 4, 8.9)],
)
def test_wide_resnets_count_as_the_paper(depth, k, published_millions):
    model = models.build(f"wrn_{depth}_{k}")
    count = _trainable_count(model)
    assert count == _wide_resnet_trainable_count(depth, k)
    assert round(count / 1e6, 1) == published_millions


def test_wide_resnet_1000_2_builds():
    # The SkipInit paper's deepest network: 3 x 166 blocks, no normalization.
    model = models.build("wrn_1000_2", norm="skipinit")
    assert _trainable_count(model) == _wide_resnet_trainable_count(1000, 2, "skipinit")
    assert model.output_shape == (None, 10)
