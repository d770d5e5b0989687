"""Each layout is exactly its checkpoint source's architecture.

keras.applications is installed, so the "keras" layout is compared with it
directly: the same weighted layers, in the same order, with the same
weights, configurations and outputs. torchvision and TF-slim are not
installed; their layouts are checked against facts of their sources
(published parameter counts, the position of every stride, padding
semantics, epsilon).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo import models
from normzoo.models import blocks

# keras.applications constructor and its parameter count (with its 1000-class
# top), measured with keras.applications 3.15.1.
_KERAS_APPLICATIONS = {
    "resnet50": (keras.applications.ResNet50, 25_636_712),
    "resnet50v2": (keras.applications.ResNet50V2, 25_613_800),
}
# Padding is compared through the outputs: a stride-1 "same" convolution is
# keras' ZeroPadding2D + "valid" one.
_CONFIG_KEYS = ("filters", "kernel_size", "strides", "use_bias", "epsilon", "momentum", "units")


def _randomize(model, rng):
    """Random weights with non-trivial BatchNorm statistics and affine terms."""
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            value = weight.numpy()
            if weight.name == "moving_variance":
                value = rng.uniform(0.5, 2.0, value.shape)
            elif weight.name in ("moving_mean", "beta", "bias"):
                value = rng.normal(0.0, 0.2, value.shape)
            elif weight.name == "gamma":
                value = rng.uniform(0.5, 1.5, value.shape)
            values.append(value.astype("float32"))
        layer.set_weights(values)


@pytest.mark.parametrize("name", sorted(_KERAS_APPLICATIONS))
def test_keras_layout_equals_keras_applications(name):
    constructor, published_count = _KERAS_APPLICATIONS[name]
    shape = (64, 64, 3)
    reference = constructor(weights=None, input_shape=shape, classifier_activation=None)
    model = models.build(name, layout="keras", input_shape=shape)
    assert model.count_params() == reference.count_params() == published_count

    reference_layers = [layer for layer in reference.layers if layer.weights]
    layers = [layer for layer in model.layers if layer.weights]
    # Same names in the same order: keras' legacy .h5 loading goes by order.
    assert [layer.name for layer in layers] == [layer.name for layer in reference_layers]
    for layer, reference_layer in zip(layers, reference_layers):
        assert [(w.name, w.shape) for w in layer.weights] == [
            (w.name, w.shape) for w in reference_layer.weights
        ], layer.name
        config, reference_config = layer.get_config(), reference_layer.get_config()
        for key in _CONFIG_KEYS:
            assert config.get(key) == reference_config.get(key), (layer.name, key)

    rng = np.random.default_rng(0)
    _randomize(reference, rng)
    model.set_weights(reference.get_weights())
    images = rng.standard_normal((2, *shape)).astype("float32")
    expected = reference(images, training=False).numpy()
    np.testing.assert_allclose(
        model(images, training=False).numpy(),
        expected,
        rtol=1e-4,
        atol=1e-4 * np.abs(expected).max(),
    )


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# torchvision's published num_params (its parameters: trainable variables;
# running statistics are buffers). Deeper variants differ only in depths,
# which test_param_counts checks against keras.applications.
_TORCHVISION_NUM_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_torchvision_layout_has_torchvisions_parameter_count(name):
    model = models.build(name, layout="torchvision")
    assert _trainable_count(model) == _TORCHVISION_NUM_PARAMS[name]


def _conv_strides(model):
    return {
        layer.name: layer.strides[0]
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.strides[0] > 1
    }


def test_torchvision_layout_is_torchvisions_resnet50():
    model = models.build("resnet50", layout="torchvision")
    assert _trainable_count(model) == _TORCHVISION_NUM_PARAMS["resnet50"]
    # v1.5: the stride of each stage's first unit is in its 3x3 convolution.
    expected = {"conv1_conv": 2}
    for stage in (3, 4, 5):
        expected |= {f"conv{stage}_block1_2_conv": 2, f"conv{stage}_block1_0_conv": 2}
    assert _conv_strides(model) == expected
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias, layer.name
        if "_bn" in layer.name:
            assert (layer.epsilon, layer.momentum) == (1e-5, 0.9), layer.name
    assert model.get_layer("conv5_block3_out").output.shape[1:3] == (7, 7)


# Parameter counts of TF-slim's resnet_v1_50 and resnet_v2_50: the variables
# of torchvision's resnet50 (trainable) and of keras' ResNet50V2 (all).
_SLIM_COUNTS = {
    "resnet50": (_trainable_count, 25_557_032),
    "resnet50v2": (keras.Model.count_params, 25_613_800),
}


@pytest.mark.parametrize("name", sorted(_SLIM_COUNTS))
def test_slim_layout_is_slims_resnet(name):
    model = models.build(name, layout="slim")
    count, expected = _SLIM_COUNTS[name]
    assert count(model) == expected
    # block1..block3 end with a stride-2 unit whose shortcut subsamples;
    # block4 keeps resolution; the stem's max pool is "SAME"; BatchNorm
    # epsilon 1e-5, decay 0.997.
    expected = {
        "conv1_conv": 2,
        "conv2_block3_2_conv": 2,
        "conv3_block4_2_conv": 2,
        "conv4_block6_2_conv": 2,
    }
    assert _conv_strides(model) == expected
    for unit in ("conv2_block3", "conv3_block4", "conv4_block6"):
        assert model.get_layer(f"{unit}_0_pool").strides == (2, 2)
    assert model.get_layer("pool1_pool").padding == "same"
    for layer in model.layers:
        if "_bn" in layer.name:
            assert (layer.epsilon, layer.momentum) == (1e-5, 0.997), layer.name
    assert model.get_layer("conv5_block3_add").output.shape[1:3] == (7, 7)


@pytest.mark.parametrize("kernel_size", [3, 7])
@pytest.mark.parametrize("size", [15, 16])
def test_strided_convolutions_pad_as_torchvision_and_slim(kernel_size, size):
    # TF-slim's conv2d_same is documented equal to a stride-1 "SAME"
    # convolution subsampled by 2; torchvision pads k // 2 on each side,
    # which is the same. Keras' own strided "same" differs on even sizes.
    inputs = keras.Input((size, size, 2))
    outputs = blocks.conv2d(inputs, 3, kernel_size, strides=2, use_bias=False, name="probe")
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).standard_normal((1, size, size, 2)).astype("float32")
    kernel = model.get_layer("probe_conv").kernel
    expected = tf.nn.conv2d(images, kernel, strides=1, padding="SAME")[:, ::2, ::2]
    np.testing.assert_allclose(model(images).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_a_layout_a_source_does_not_have_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="valid layouts: keras, slim"):
        models.build("resnet50v2", layout="torchvision")


@pytest.mark.parametrize("name", ["wide_resnet50_2", "resnet50d"])
def test_torchvision_and_timm_variants_default_to_their_layout(name):
    model = models.build(name, input_shape=(64, 64, 3))
    assert not any(layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert {(layer.epsilon, layer.momentum) for layer in model.layers if layer.name.endswith("_bn")} == {
        (1e-5, 0.9)
    }
    # v1.5: the stride of a downsampling bottleneck is in its 3x3 convolution.
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)


def test_resnet_d_has_a_deep_stem_and_average_pool_shortcuts():
    # He et al. 2019 ("Bag of Tricks", Figure 2c): three 3x3 convolutions of
    # width/2, width/2 and width channels, the first strided; a downsampling
    # shortcut averages 2x2 windows, then an unstrided 1x1 convolution.
    model = models.build("resnet50d", width=16, input_shape=(64, 64, 3))
    stem = [model.get_layer(f"conv1_{j}_conv") for j in (1, 2, 3)]
    assert [(c.filters, c.kernel_size, c.strides) for c in stem] == [
        (8, (3, 3), (2, 2)), (8, (3, 3), (1, 1)), (16, (3, 3), (1, 1))
    ]
    for stage in (3, 4, 5):
        pool = model.get_layer(f"conv{stage}_block1_0_pool")
        assert isinstance(pool, keras.layers.AveragePooling2D) and pool.strides == (2, 2)
        assert model.get_layer(f"conv{stage}_block1_0_conv").strides == (1, 1)
    # conv2's first unit keeps the resolution: its projection is unpooled.
    assert model.get_layer("conv2_block1_0_conv").strides == (1, 1)
    assert "conv2_block1_0_pool" not in [layer.name for layer in model.layers]


def test_resnet_d_refuses_an_odd_width_naming_it():
    with pytest.raises(ValueError, match="width=7 is odd"):
        models.build("resnet18d", width=7)
