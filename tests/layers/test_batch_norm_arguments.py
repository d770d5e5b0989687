"""`BatchNorm`'s constructor against `keras.layers.BatchNormalization`'s: every
argument and config key Keras has, in the same order, and the same exception
types for the same invalid arguments (Keras' own layer is run on each case,
so the tests show what Keras does)."""

import inspect

import keras
import numpy as np
import pytest

from normzoo.layers import BatchNorm

# A NumPy copy of a tensor or variable on any backend (np.asarray fails
# for a PyTorch tensor that requires grad).
numpy = keras.ops.convert_to_numpy

KERAS_CONFIGS = {
    "defaults": {},
    "channels_first_no_center": dict(
        axis=1,
        momentum=0.9,
        epsilon=1e-5,
        center=False,
        gamma_regularizer="l2",
        beta_regularizer=keras.regularizers.L1(0.01),
        gamma_constraint="non_neg",
    ),
    "initializers": dict(
        gamma_initializer=keras.initializers.RandomNormal(1.0, 0.1, seed=1),
        beta_initializer=keras.initializers.RandomNormal(seed=2),
        moving_mean_initializer=keras.initializers.Constant(0.5),
        moving_variance_initializer=keras.initializers.Constant(2.0),
    ),
    "renorm": dict(renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 0.3, "dmax": 5.0}, renorm_momentum=0.9),
    "mixed_precision_frozen": dict(dtype="mixed_float16", trainable=False, name="custom"),
}
# Keras refuses synchronized=True on any other backend, normzoo on PyTorch (tested below).
if keras.backend.backend() == "tensorflow":
    KERAS_CONFIGS["synchronized"] = dict(synchronized=True, scale=False)


@pytest.mark.parametrize("arguments", KERAS_CONFIGS.values(), ids=KERAS_CONFIGS.keys())
def test_a_keras_config_builds_the_equivalent_layer(arguments):
    """What `normzoo.bn.convert` relies on: `BatchNorm.from_config` (and
    `BatchNorm(**config)`) accept every key of a Keras layer's config, our
    config holds each with Keras' value (plus `frozen_stats`), and with the
    same weights the layers compute the same outputs in training and
    inference."""
    theirs = keras.layers.BatchNormalization(**arguments)
    keras_config = theirs.get_config()
    ours = BatchNorm.from_config(keras_config)
    BatchNorm(**keras_config)
    config = ours.get_config()
    assert set(config) == set(keras_config) | {"frozen_stats"}
    assert {key: config[key] for key in keras_config} == keras_config
    assert config["frozen_stats"] is False

    shape = (4, 3, 5, 5) if theirs.axis == 1 else (4, 5, 5, 3)
    theirs.build(shape)
    ours.build(shape)
    ours.set_weights(theirs.get_weights())
    x = np.random.default_rng(0).normal(1.0, 2.0, shape).astype(theirs.compute_dtype)
    for training in (True, False, True):
        np.testing.assert_allclose(
            numpy(ours(x, training=training)).astype(np.float32),
            numpy(theirs(x, training=training)).astype(np.float32),
            rtol=1e-5 if theirs.compute_dtype == "float32" else 1e-2,
            atol=1e-5 if theirs.compute_dtype == "float32" else 1e-2,
        )
    for mine, keras_weight in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(numpy(mine), numpy(keras_weight), rtol=1e-5, atol=1e-6)


def test_arguments_are_keras_in_keras_order_then_frozen_stats_and_all_in_the_config():
    """Positional calls written for Keras mean the same here, and
    `get_config` lists every constructor argument."""
    ours = list(inspect.signature(BatchNorm.__init__).parameters)
    theirs = list(inspect.signature(keras.layers.BatchNormalization.__init__).parameters)
    assert ours == theirs[:-1] + ["frozen_stats", "kwargs"]
    config = BatchNorm().get_config()
    for argument in ours[1:-1]:
        assert argument in config, argument


# (arguments, exception type Keras raises, what our message names)
INVALID_ARGUMENTS = {
    "axis_list": (dict(axis=[1]), TypeError, "axis"),
    "axis_string": (dict(axis="a"), ValueError, "axis"),
    "axis_none": (dict(axis=None), TypeError, "axis"),
    "momentum_none": (dict(momentum=None), TypeError, "momentum"),
    "momentum_string": (dict(momentum="a"), ValueError, "momentum"),
    "epsilon_none": (dict(epsilon=None), TypeError, "epsilon"),
    "epsilon_string": (dict(epsilon="a"), ValueError, "epsilon"),
    "unknown_initializer": (dict(moving_variance_initializer="nope"), ValueError, "initializer"),
    "unknown_regularizer": (dict(gamma_regularizer="nope"), ValueError, "regularizer"),
    "unknown_constraint": (dict(beta_constraint="nope"), ValueError, "constraint"),
    "clipping_unknown_key": (
        dict(renorm=True, renorm_clipping={"random_key": 1.0}),
        ValueError,
        "unknown key.*'rmax', 'rmin' and 'dmax'",
    ),
    "clipping_rmax_below_rmin": (
        dict(renorm=True, renorm_clipping={"rmax": 0.0, "rmin": 1.0}),
        ValueError,
        "rmin <= rmax",
    ),
    "clipping_negative_dmax": (
        dict(renorm=True, renorm_clipping={"rmax": 1.0, "dmax": -1.0}),
        ValueError,
        "dmax",
    ),
    "clipping_not_a_dict": (dict(renorm=True, renorm_clipping=5), TypeError, "must be a dict"),
    "clipping_not_a_number": (
        dict(renorm=True, renorm_clipping={"rmax": "a", "rmin": 1}),
        TypeError,
        "must be a number",
    ),
}


@pytest.mark.parametrize("case", INVALID_ARGUMENTS)
def test_invalid_arguments_raise_the_exception_type_keras_raises(case):
    arguments, exception, message = INVALID_ARGUMENTS[case]
    with pytest.raises(exception):
        keras.layers.BatchNormalization(**arguments)
    with pytest.raises(exception, match=message):
        BatchNorm(**arguments)


@pytest.mark.parametrize("layer_class", [BatchNorm, keras.layers.BatchNormalization])
def test_an_axis_out_of_range_is_an_index_error_as_in_keras_and_a_value_error(layer_class):
    with pytest.raises(IndexError):
        layer_class(axis=4).build((2, 3, 3, 3))
    if layer_class is BatchNorm:
        with pytest.raises(ValueError, match="out of range for an input of rank 4"):
            layer_class(axis=-5).build((2, 3, 3, 3))


@pytest.mark.parametrize("layer_class", [BatchNorm, keras.layers.BatchNormalization])
def test_an_unknown_feature_size_is_a_value_error_as_in_keras(layer_class):
    with pytest.raises(ValueError):
        layer_class()(keras.Input((3, None)))


REFUSED_ARGUMENTS = {
    # Keras takes each of these; none can work.
    "momentum_above_1": (dict(momentum=1.5), ValueError, r"`momentum` must be in \[0, 1\]"),
    "renorm_momentum_negative": (
        dict(renorm=True, renorm_momentum=-0.1),
        ValueError,
        r"`renorm_momentum` must be in \[0, 1\]",
    ),
    "epsilon_zero": (dict(epsilon=0.0), ValueError, "`epsilon` must be positive"),
    "axis_fractional": (dict(axis=1.5), TypeError, "`axis` must be one integer"),
}


@pytest.mark.parametrize("case", REFUSED_ARGUMENTS)
def test_arguments_keras_takes_but_that_cannot_work_are_refused(case):
    arguments, exception, message = REFUSED_ARGUMENTS[case]
    keras.layers.BatchNormalization(**arguments)
    with pytest.raises(exception, match=message):
        BatchNorm(**arguments)


def test_an_input_without_a_batch_axis_is_refused_naming_the_fix():
    """Keras normalizes a rank-1 input over nothing (output: beta) on
    TensorFlow and JAX, and fails inside its call on PyTorch."""
    x = np.arange(3.0, dtype="float32")
    if keras.backend.backend() == "torch":
        # Keras 3.15.1's torch batch_normalization reshapes the (3,)
        # statistics to the input's broadcast shape [1].
        with pytest.raises(RuntimeError, match=r"shape '\[1\]' is invalid for input of size 3"):
            keras.layers.BatchNormalization()(x, training=True)
    else:
        np.testing.assert_array_equal(numpy(keras.layers.BatchNormalization()(x, training=True)), 0.0)
    with pytest.raises(ValueError, match=r"rank >= 2.*Add a batch axis"):
        BatchNorm()(x, training=True)


@pytest.mark.parametrize("layer_class", [BatchNorm, keras.layers.BatchNormalization])
def test_synchronized_on_another_backend_is_a_value_error_as_in_keras(monkeypatch, layer_class):
    # PyTorch: Keras has no data-parallel API there. (On JAX normzoo accepts
    # it, Keras does not: tests/jax/test_data_parallel.py.)
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(keras.src.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match="synchronized"):
        layer_class(synchronized=True)
    layer_class(synchronized=False)


def test_accepted_numbers_are_converted_as_keras_converts_them():
    """Keras takes what int() and float() take: NumPy scalars and numeric strings."""
    layer = BatchNorm(axis=np.int64(1), momentum="0.9", epsilon=np.float32(1e-3))
    keras_layer = keras.layers.BatchNormalization(axis=np.int64(1), momentum="0.9", epsilon=np.float32(1e-3))
    for argument in ("axis", "momentum", "epsilon"):
        assert getattr(layer, argument) == getattr(keras_layer, argument)
        assert type(getattr(layer, argument)) is type(getattr(keras_layer, argument))


def test_batch_normalization_is_batch_norm_under_keras_class_name_and_round_trips():
    import normzoo.layers

    layer = normzoo.layers.BatchNormalization(renorm=True, momentum=0.9, frozen_stats=True)
    assert isinstance(layer, BatchNorm)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is normzoo.layers.BatchNormalization
    assert restored.get_config() == layer.get_config()
