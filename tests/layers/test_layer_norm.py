"""normzoo.layers.LayerNorm against NumPy and Keras' own normalization layers."""

import keras
import numpy as np
import pytest

from normzoo.layers import LayerNorm

# A NumPy copy of a tensor or variable on any backend (np.asarray fails
# for a PyTorch tensor that requires grad).
numpy = keras.ops.convert_to_numpy


def images(shape=(4, 5, 6, 3), seed=1):
    return np.random.default_rng(seed).normal(1.5, 2.0, shape).astype("float32")


def randomize_parameters(*layers, seed=0):
    """Gives the layers the same random gamma and beta."""
    rng = np.random.default_rng(seed)
    shape = layers[0].gamma.shape
    gamma = rng.uniform(0.5, 2.0, shape).astype("float32")
    beta = rng.normal(size=shape).astype("float32")
    for layer in layers:
        layer.gamma.assign(np.reshape(gamma, layer.gamma.shape))
        layer.beta.assign(np.reshape(beta, layer.beta.shape))


@pytest.mark.parametrize(
    "axis, shape",
    [(-1, (4, 7)), (-1, (4, 5, 6, 3)), ((1, 2, 3), (4, 5, 6, 3)), ((2, 3), (3, 4, 5, 6))],
)
def test_matches_keras_layer_normalization_when_parameters_span_the_normalized_axes(axis, shape):
    x = images(shape)
    ours = LayerNorm(axis=axis, param_axis=axis)
    theirs = keras.layers.LayerNormalization(axis=list(axis) if isinstance(axis, tuple) else axis)
    ours.build(shape)
    theirs.build(shape)
    randomize_parameters(ours, theirs)
    np.testing.assert_allclose(numpy(ours(x)), numpy(theirs(x)), atol=1e-5, rtol=1e-5)


def test_per_image_normalization_with_per_channel_parameters_is_group_norm_with_one_group():
    shape = (4, 5, 6, 8)
    x = images(shape)
    ours = LayerNorm(axis=(1, 2, 3), param_axis=-1)
    theirs = keras.layers.GroupNormalization(groups=1)
    ours.build(shape)
    theirs.build(shape)
    assert tuple(ours.gamma.shape) == (8,)
    randomize_parameters(ours, theirs)
    np.testing.assert_allclose(numpy(ours(x)), numpy(theirs(x)), atol=1e-5, rtol=1e-5)


def test_output_matches_numpy_formula_with_channels_first_parameters():
    shape = (3, 4, 5, 6)  # NCHW: normalize per image, one gamma/beta per channel
    x = images(shape)
    layer = LayerNorm(axis=(1, 2, 3), param_axis=1, epsilon=1e-5)
    layer.build(shape)
    randomize_parameters(layer)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(1, 2, 3), keepdims=True)
    variance = x64.var(axis=(1, 2, 3), keepdims=True)
    gamma = numpy(layer.gamma).reshape(1, 4, 1, 1)
    beta = numpy(layer.beta).reshape(1, 4, 1, 1)
    expected = gamma * (x64 - mean) / np.sqrt(variance + 1e-5) + beta
    np.testing.assert_allclose(numpy(layer(x)), expected, atol=1e-5, rtol=1e-5)


def test_output_of_a_sample_does_not_depend_on_its_batch():
    """Article 003: LN normalizes each sample over its own features. Other
    samples in a batch of the same shape change nothing, bit for bit; a
    batch of another size gives the same output up to the rounding of the
    per-sample sums, whose order the compiler may choose by shape (XLA on an
    AVX-512 CPU sums the squares of a (1, 48) and a (6, 48) input in
    different orders: 1 ulp apart, seen 2026-12-06)."""
    x = images((6, 4, 4, 3))
    other = x.copy()
    other[1:] = images((5, 4, 4, 3), seed=9) * 10
    layer = LayerNorm(axis=(1, 2, 3))
    np.testing.assert_array_equal(numpy(layer(x))[0], numpy(layer(other))[0])
    np.testing.assert_allclose(numpy(layer(x[:1]))[0], numpy(layer(x))[0], rtol=1e-6, atol=1e-6)


def test_statistics_are_accurate_when_mean_dwarfs_std():
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.normal(size=(2, 256))).astype("float32")
    y = numpy(LayerNorm(epsilon=1e-12)(x))
    np.testing.assert_allclose(y.std(axis=1), 1.0, rtol=0.01)


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_keeps_float32_parameters_and_outputs_compute_dtype(policy, compute_dtype, monkeypatch):
    shape = (4, 5, 5, 3)
    x = images(shape).astype(compute_dtype)
    reference = LayerNorm(axis=(1, 2, 3))
    reference.build(shape)
    randomize_parameters(reference)
    expected = numpy(reference(x.astype("float32")))
    # Only the output's final rounding to the compute dtype differs: at most
    # half an ulp, 2^-11 (float16) or 2^-8 (bfloat16) relative, 2^-25 absolute
    # below float16's normal range; measured 4.6e-4 and 3.5e-3. Statistics
    # computed in the compute dtype (the variant checked below) exceed that
    # bound by 5.5e-4 (float16) and 1.0e-2 (bfloat16).
    rounding = 2.0**-11 if compute_dtype == "float16" else 2.0**-8

    def check():
        layer = LayerNorm(axis=(1, 2, 3), dtype=policy)
        layer.build(shape)
        layer.set_weights(reference.get_weights())
        assert layer.gamma.dtype == "float32" and layer.beta.dtype == "float32"
        y = layer(x)
        assert keras.backend.standardize_dtype(y.dtype) == compute_dtype
        np.testing.assert_allclose(numpy(y).astype("float32"), expected, rtol=rounding, atol=2.0**-25)

    check()

    def half_precision_moments(x, axes, mask=None):
        x = keras.ops.cast(x, compute_dtype)
        mean = keras.ops.mean(x, axes, keepdims=True)
        variance = keras.ops.var(x, axes, keepdims=True)
        return tuple(keras.ops.cast(v, "float32") for v in (mean, variance, x - mean))

    monkeypatch.setattr("normzoo.layers.layer_norm.moments", half_precision_moments)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check()


def test_keras_file_round_trip_reproduces_outputs(tmp_path):
    inputs = keras.Input((5, 5, 3))
    outputs = LayerNorm(axis=(1, 2, 3), epsilon=1e-4, name="ln")(inputs)
    model = keras.Model(inputs, outputs)
    randomize_parameters(model.get_layer("ln"))
    path = tmp_path / "ln.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("ln"), LayerNorm)
    assert loaded.get_layer("ln").get_config() == model.get_layer("ln").get_config()
    x = images((2, 5, 5, 3))
    np.testing.assert_array_equal(numpy(loaded(x)), numpy(model(x)))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"axis": 0}, "batch axis"), ({"axis": (1, 5)}, "out of range"), ({"param_axis": (2, 2)}, "twice")],
)
def test_invalid_axes_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayerNorm(**kwargs).build((2, 3, 4, 5))
