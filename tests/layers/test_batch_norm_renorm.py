"""Batch Renormalization (`BatchNorm(renorm=True)`) against Keras'
`keras.layers.BatchNormalization(renorm=True)` with the same weights, and a
NumPy (float64) transcription of Ioffe (2017) as Keras implements it."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import normzoo.layers
from normzoo.layers import BatchNorm
from tests import references
from tests.references import feature_shape, reduction_axes

EPSILON = 1e-3
MOMENTUM = 0.9
RENORM_MOMENTUM = 0.7
STATISTICS = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")
# Tight enough that the data below hits every bound.
CLIPPING = {"rmax": 1.3, "rmin": 0.8, "dmax": 0.25}


def numpy_renorm_step(x, state, gamma, beta, axis, clipping, mask=None):
    return references.renorm_step(
        x, state, gamma, beta, axis, clipping, epsilon=EPSILON, momentum=MOMENTUM,
        renorm_momentum=RENORM_MOMENTUM, mask=mask,
    )


def randomized_layer(input_shape, axis=-1, seed=0, **kwargs):
    """Our renorm layer, built, with random values in every variable."""
    layer = BatchNorm(axis=axis, momentum=MOMENTUM, epsilon=EPSILON, renorm=True, **kwargs)
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    values = []
    for weight in layer.weights:
        positive = any(word in weight.path for word in ("variance", "stddev", "gamma"))
        values.append(
            rng.uniform(0.5, 2.0, weight.shape) if positive else rng.normal(size=weight.shape)
        )
    layer.set_weights([v.astype("float32") for v in values])
    return layer


def layer_pair(input_shape, axis=-1, seed=0, **kwargs):
    """`randomized_layer`, and Keras' renorm layer with the same values."""
    ours = randomized_layer(input_shape, axis, seed, **kwargs)
    theirs = keras.layers.BatchNormalization(
        axis=axis, momentum=MOMENTUM, epsilon=EPSILON, renorm=True, **kwargs
    )
    theirs.build(input_shape)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def state_of(layer):
    return {name: getattr(layer, name).numpy().astype(np.float64) for name in STATISTICS}


def training_step(layer, mode="eager"):
    """(x, upstream, mask=None) -> the output of a training call and the
    gradients of sum(upstream * output) w.r.t. x, gamma and beta; the step
    runs eagerly, traced (`tf.function`, "graph") or compiled by XLA."""

    def step(x, upstream, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=True, mask=mask)
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * upstream)
        return outputs, tape.gradient(loss, [x, layer.gamma, layer.beta])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")

    def run(x, upstream, mask=None):
        mask = None if mask is None else tf.constant(mask)
        outputs, gradients = step(tf.constant(x), tf.constant(upstream), mask)
        return np.asarray(outputs, np.float32), [g.numpy() for g in gradients]

    return run


# name: (input shape, feature axis, clipping, masked)
CASES = {
    "dense": ((8, 3), -1, {}, False),
    "dense_clipped": ((8, 3), -1, CLIPPING, False),
    # 4-D: the fused kernel standardizes.
    "image_clipped": ((4, 3, 3, 2), -1, CLIPPING, False),
    "channels_first_clipped": ((4, 2, 3, 3), 1, CLIPPING, False),
    "sequence_masked_clipped": ((4, 5, 3), -1, CLIPPING, True),
}


# "graph": a traced step, where the statistics' update must not race the
# reads of the renorm statistics that the outputs use (it did, with outputs
# 0.05 off NumPy's in some runs, until the update was ordered after them).
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("case", CASES)
def test_renorm_training_matches_numpy_and_keras_over_steps(case, mode):
    """Three training steps on data whose statistics differ from the renorm
    statistics (so r and d matter, and the clipping bounds are hit): the
    outputs follow NumPy's formula and equal Keras', the gradients equal
    Keras' autodiff, and every variable equals NumPy's and Keras' after
    each step."""
    shape, axis, clipping, masked = CASES[case]
    ours, theirs = layer_pair(shape, axis, renorm_clipping=clipping, renorm_momentum=RENORM_MOMENTUM)
    gamma, beta = ours.gamma.numpy(), ours.beta.numpy()
    state = state_of(ours)
    hit = set()
    step_ours, step_theirs = training_step(ours, mode), training_step(theirs)
    for step in range(3):
        rng = np.random.default_rng(10 + step)
        x = rng.normal(1.0 + step, 0.5 + step, shape).astype("float32")
        upstream = rng.normal(size=shape).astype("float32")
        mask = (rng.random(shape[:-1]) < 0.7) if masked else None
        if masked:
            mask[0] = True
        expected, state, clipped = numpy_renorm_step(x, state, gamma, beta, axis, clipping, mask)
        hit.update(bound for bound, was_hit in clipped.items() if was_hit)
        outputs, gradients = step_ours(x, upstream, mask)
        keras_outputs, keras_gradients = step_theirs(x, upstream, mask)
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5, err_msg=f"{step=}")
        np.testing.assert_allclose(outputs, keras_outputs, rtol=1e-5, atol=1e-5, err_msg=f"{step=}")
        for name, mine, keras_gradient in zip(("x", "gamma", "beta"), gradients, keras_gradients):
            np.testing.assert_allclose(
                mine, keras_gradient, rtol=1e-4, atol=1e-5, err_msg=f"d_{name} {step=}"
            )
        for name in STATISTICS:
            mine = getattr(ours, name).numpy()
            np.testing.assert_allclose(mine, state[name], rtol=1e-5, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(
                mine, getattr(theirs, name).numpy(), rtol=1e-5, atol=1e-6, err_msg=name
            )
    assert hit == set(clipping), f"bounds {set(clipping) - hit} were never hit"


@pytest.mark.parametrize("center, scale", [(True, True), (False, False), (True, False)])
def test_renorm_variables_are_keras_by_name_order_shape_flag_and_initial_value(center, scale):
    """Keras' test_renorm_stddev_initializer too: the stddevs start at the
    square root of the variance initializer's value."""
    arguments = dict(
        renorm=True,
        center=center,
        scale=scale,
        moving_mean_initializer=keras.initializers.Constant(0.5),
        moving_variance_initializer=keras.initializers.Constant(4.0),
    )
    ours, theirs = BatchNorm(**arguments), keras.layers.BatchNormalization(**arguments)
    for layer in (ours, theirs):
        layer.build((None, 6, 5))
    assert len(ours.weights) == len(theirs.weights) == 5 + center + scale
    for mine, keras_weight in zip(ours.weights, theirs.weights):
        assert mine.path.split("/")[-1] == keras_weight.path.split("/")[-1]
        assert mine.shape == keras_weight.shape == (5,)
        assert mine.trainable == keras_weight.trainable
        np.testing.assert_array_equal(mine.numpy(), keras_weight.numpy(), err_msg=mine.path)
    np.testing.assert_array_equal(ours.moving_stddev.numpy(), 2.0)
    np.testing.assert_array_equal(ours.renorm_stddev.numpy(), 2.0)
    np.testing.assert_array_equal(ours.renorm_mean.numpy(), 0.5)


def conv_renorm_model(layer_class, **kwargs):
    inputs = keras.Input((5, 5, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    x = layer_class(renorm=True, momentum=0.5, renorm_momentum=0.6, name="bn", **kwargs)(x)
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "source, target",
    [
        (keras.layers.BatchNormalization, normzoo.layers.BatchNormalization),
        (normzoo.layers.BatchNormalization, keras.layers.BatchNormalization),
    ],
    ids=["keras_to_normzoo", "normzoo_to_keras"],
)
def test_renorm_weights_files_load_across_keras_and_normzoo(tmp_path, source, target):
    """A `.weights.h5` of a model with Keras' renorm layer, trained two steps
    (every statistic non-initial), loads with `load_weights` into the same
    model built with normzoo's layer, and gives the same outputs in
    inference and training, and the same variables after a training step;
    and the other way round."""
    keras.utils.set_random_seed(1)
    original = conv_renorm_model(source, renorm_clipping={"rmax": 2.0, "dmax": 1.0})
    original.compile(keras.optimizers.SGD(0.1), "mse")
    rng = np.random.default_rng(5)
    x, y = rng.normal(1.0, 2.0, (8, 5, 5, 2)).astype("float32"), rng.normal(size=(8, 2))
    original.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "renorm.weights.h5")
    original.save_weights(path)
    loaded = conv_renorm_model(target, renorm_clipping={"rmax": 2.0, "dmax": 1.0})
    loaded.load_weights(path)

    for before, after in zip(original.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(after, before)
    np.testing.assert_allclose(loaded(x, training=False), original(x, training=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded(x, training=True), original(x, training=True), rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(loaded.weights, original.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=mine.path)


def test_keras_weights_files_key_layers_by_class_name(tmp_path):
    """Why `BatchNormalization` exists: Keras files the variables of a
    `BatchNorm` under "batch_norm", of Keras' layer under
    "batch_normalization", so a file of one does not load into the other."""
    path = str(tmp_path / "renorm.weights.h5")
    conv_renorm_model(keras.layers.BatchNormalization).save_weights(path)
    with pytest.raises(ValueError, match="could not be loaded"):
        conv_renorm_model(BatchNorm).load_weights(path)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_renorm_under_mixed_precision_matches_keras(policy):
    """float32 variables and arithmetic, output in the compute dtype, and the
    same numbers as Keras' layer under the same policy."""
    shape = (4, 3, 3, 2)
    ours, theirs = layer_pair(shape, renorm_clipping=CLIPPING, dtype=policy)
    compute_dtype = ours.compute_dtype
    for variable in ours.variables:
        assert variable.dtype == "float32", variable.path
    for step in range(2):
        x = np.random.default_rng(step).normal(1.0, 2.0, shape).astype(compute_dtype)
        for training in (True, False):
            outputs = ours(x, training=training)
            assert outputs.dtype == compute_dtype
            np.testing.assert_allclose(
                np.asarray(outputs, np.float32),
                np.asarray(theirs(x, training=training), np.float32),
                rtol=1e-2,
                atol=1e-2,
            )
    for mine, keras_weight in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(mine.numpy(), keras_weight.numpy(), rtol=1e-5, err_msg=mine.path)


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_renorm_with_frozen_stats_is_inference_normalization_and_changes_no_statistic(mode):
    """frozen_stats with renorm: the moving mean and variance normalize in
    training too, none of the five statistics changes, and the gradients are
    those of that fixed affine map (the moving statistics, not r and d)."""
    shape = (6, 4, 3)
    ours = randomized_layer(shape, frozen_stats=True)
    before = {name: getattr(ours, name).numpy() for name in STATISTICS}
    rng = np.random.default_rng(7)
    x, upstream = rng.normal(2.0, 3.0, shape).astype("float32"), rng.normal(size=shape).astype("float32")
    outputs, (d_x, d_gamma, d_beta) = training_step(ours, mode)(x, upstream)
    inverse_std = 1 / np.sqrt(before["moving_variance"] + EPSILON)
    standardized = (x - before["moving_mean"]) * inverse_std
    gamma, beta = ours.gamma.numpy(), ours.beta.numpy()
    np.testing.assert_allclose(outputs, standardized * gamma + beta, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs, ours(x, training=False), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d_x, upstream * gamma * inverse_std, rtol=1e-5)
    np.testing.assert_allclose(d_gamma, (upstream * standardized).sum((0, 1)), rtol=1e-4)
    np.testing.assert_allclose(d_beta, upstream.sum((0, 1)), rtol=1e-4)
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(ours, name).numpy(), value, err_msg=name)


def test_renorm_inference_is_batch_norm_inference():
    """Keras' test_renorm_inference: the moving mean and variance, nothing of renorm."""
    shape = (5, 4)
    renormalizing = randomized_layer(shape)
    plain = BatchNorm(momentum=MOMENTUM, epsilon=EPSILON)
    plain.build(shape)
    plain.set_weights(renormalizing.get_weights()[:4])
    x = np.random.default_rng(8).normal(size=shape).astype("float32")
    np.testing.assert_array_equal(renormalizing(x, training=False), plain(x, training=False))


def test_renorm_config_round_trips_and_keras_config_builds_the_same_layer():
    arguments = dict(renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 0.3, "dmax": 5.0}, renorm_momentum=0.95)
    ours = BatchNorm(**arguments)
    config = ours.get_config()
    assert {key: config[key] for key in arguments} == arguments
    assert BatchNorm.from_config(config).get_config() == config
    keras_config = keras.layers.BatchNormalization(**arguments).get_config()
    from_keras = BatchNorm.from_config(keras_config)
    assert {key: from_keras.get_config()[key] for key in keras_config} == keras_config
    # As Keras: no renorm, no validation or default of the clipping.
    assert BatchNorm().get_config()["renorm_clipping"] is None
    assert BatchNorm(renorm=True).get_config()["renorm_clipping"] == {}
