"""normzoo.layers on Keras' JAX and PyTorch backends, eagerly and compiled,
against the NumPy float64 references the TensorFlow tests use
(tests/references.py) and Keras' own layers on the same backend.

Imported by tests/jax/test_layers.py and tests/torch/test_layers.py, which
define the fixtures the tests take:

- `jit`: False (the eager call) and True (the compiled one), with the
  backend's ids ("eager" and "jit" on JAX, "eager" and "compiled" on
  PyTorch).
- `backend`: the backend's hooks, an object with
  - `training_call(layer, jit)`: (x, mask=None) -> layer(x, training=True,
    mask=mask) as a backend tensor, eagerly or compiled whole (what
    `Model.fit(jit_compile=True)` compiles); the moving statistics are
    updated either way.
  - `gradients(layer, x, loss, **kwargs)`: the gradients of
    loss(layer(x, **kwargs)) (`loss` in keras.ops) with respect to x and
    each of `layer.trainable_variables`, through the compiled call, as
    NumPy arrays.
  - `compiled(function)`: `function` compiled by the backend.
"""

import keras
import numpy as np
import pytest

from normzoo.layers import BatchNorm, LayerNorm, SkipInit
from tests import references
from tests.backend_suite import numpy

EPSILON = 1e-3


def images(shape, seed=1, loc=1.5, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape).astype("float32")


def randomized(layer, input_shape, seed=0):
    """`layer`, built, with random values in every variable (positive where
    they must be)."""
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        positive = any(word in weight.path for word in ("variance", "stddev", "gamma"))
        value = rng.uniform(0.5, 2.0, weight.shape) if positive else rng.normal(size=weight.shape)
        weight.assign(value.astype("float32"))
    return layer


def training_call(backend, layer, jit):
    """(x, mask=None) -> layer(x, training=True, mask=mask) as a NumPy array,
    eagerly or compiled by `backend`; the moving statistics are updated
    either way."""
    call = backend.training_call(layer, jit)
    return lambda x, mask=None: numpy(call(x, mask))


def training_gradients(backend, layer, x, upstream):
    """Gradients of sum(upstream * layer(x, training=True)) w.r.t. x, gamma
    and beta, through `backend`'s compiled call."""

    def loss(outputs):
        return keras.ops.sum(keras.ops.multiply(keras.ops.cast(outputs, "float32"), upstream))

    d_x, d_gamma, d_beta = backend.gradients(layer, x, loss, training=True)
    return d_x, d_gamma, d_beta


@pytest.mark.parametrize("axis, shape", [(-1, (4, 5, 6, 3)), (1, (4, 3, 5, 6)), (-1, (8, 7))])
def test_training_follows_the_formula_and_the_moving_statistics_the_momentum(axis, shape, jit, backend):
    momentum = 0.9
    layer = randomized(BatchNorm(axis=axis, momentum=momentum), shape)
    gamma, beta = numpy(layer.gamma), numpy(layer.beta)
    moving_mean, moving_variance = numpy(layer.moving_mean), numpy(layer.moving_variance)
    call = training_call(backend, layer, jit)
    for seed in range(2):
        x = images(shape, seed=seed)
        mean, variance = references.batch_moments(x, axis)
        expected = references.batch_norm(x, mean, variance, gamma, beta, axis, EPSILON)
        np.testing.assert_allclose(call(x), expected, atol=1e-5, rtol=1e-5)
        moving_mean = momentum * moving_mean + (1 - momentum) * mean
        moving_variance = momentum * moving_variance + (1 - momentum) * variance
    np.testing.assert_allclose(numpy(layer.moving_mean), moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numpy(layer.moving_variance), moving_variance, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["inference", "frozen_stats", "not_trainable"])
def test_moving_statistics_normalize_in_inference_with_frozen_stats_and_when_not_trainable(mode, backend):
    shape = (4, 5, 6, 3)
    layer = randomized(BatchNorm(frozen_stats=mode == "frozen_stats"), shape)
    layer.trainable = mode != "not_trainable"
    before = [numpy(v).copy() for v in layer.weights]
    x = images(shape)
    expected = references.batch_norm(x, *(numpy(v) for v in (
        layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta)), -1, EPSILON)
    outputs = numpy(layer(x)) if mode == "inference" else training_call(backend, layer, jit=True)(x)
    np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=1e-5)
    for value, weight in zip(before, layer.weights):
        np.testing.assert_array_equal(numpy(weight), value, err_msg=weight.path)


@pytest.mark.parametrize(
    "shape, axis", [((6, 4, 4, 3), -1), ((6, 3, 4, 4), 1), ((16, 5), -1), ((4, 3, 2, 2, 3), -1)]
)
def test_compiled_gradients_equal_the_batch_norm_formula_for_every_rank(shape, axis, backend):
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    layer = randomized(BatchNorm(axis=axis), shape)
    got = training_gradients(backend, layer, x, upstream)
    expected = references.batch_norm_gradients(x, numpy(layer.gamma), upstream, EPSILON, axis)
    for name, g, e in zip(("x", "gamma", "beta"), got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("shape", [(64, 4, 4, 3), (128, 3), (16, 8, 3)])
def test_variance_is_accurate_and_non_negative_when_mean_dwarfs_std(shape, jit, backend):
    """Mean 1e4, std 1e-2 in float32 (one ulp of 1e4 is 1e-3)."""
    layer = BatchNorm(momentum=0.0)  # moving variance becomes the batch variance
    update = training_call(backend, layer, jit)
    normalize = training_call(backend, BatchNorm(epsilon=1e-12), jit)
    axes = tuple(range(len(shape) - 1))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = (1e4 + 1e-2 * rng.normal(size=shape)).astype("float32")
        update(x)
        _, expected = references.batch_moments(x, -1)
        got = numpy(layer.moving_variance)
        assert (got >= 0).all()
        np.testing.assert_allclose(got, expected, rtol=0.01, err_msg=f"seed {seed}")
        y = normalize(x).astype(np.float64)
        np.testing.assert_allclose(y.std(axis=axes), 1.0, rtol=0.01, err_msg=f"seed {seed}")
        np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=0.01, err_msg=f"seed {seed}")


def test_gradients_stay_accurate_when_mean_dwarfs_std(backend):
    rng = np.random.default_rng(5)
    shape = (8, 4, 4, 3)
    x = (1e4 + 1e-2 * rng.normal(size=shape)).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    layer = randomized(BatchNorm(epsilon=1e-12), shape)
    got = training_gradients(backend, layer, x, upstream)
    expected = references.batch_norm_gradients(x, numpy(layer.gamma), upstream, 1e-12, -1)
    for name, g, e in zip(("x", "gamma", "beta"), got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * np.abs(e).max(), err_msg=name)


def test_non_finite_batch_statistic_never_enters_the_moving_averages(jit, backend):
    shape = (4, 3, 3, 3)
    layer = randomized(BatchNorm(momentum=0.5), shape)
    before_mean, before_variance = numpy(layer.moving_mean), numpy(layer.moving_variance)
    x = images(shape)
    x[1, 2, 0, 0] = np.nan
    x[0, 0, 1, 2] = np.inf
    training_call(backend, layer, jit)(x)
    mean, variance = numpy(layer.moving_mean), numpy(layer.moving_variance)
    np.testing.assert_array_equal(mean[[0, 2]], before_mean[[0, 2]])
    np.testing.assert_array_equal(variance[[0, 2]], before_variance[[0, 2]])
    batch_mean, batch_variance = references.batch_moments(x[..., 1:2], -1)
    np.testing.assert_allclose(mean[1], 0.5 * before_mean[1] + 0.5 * batch_mean[0], rtol=1e-5)
    np.testing.assert_allclose(variance[1], 0.5 * before_variance[1] + 0.5 * batch_variance[0], rtol=1e-5)


@pytest.mark.parametrize(
    "shape, axis, mask_shape", [((4, 6, 3), -1, (4, 6)), ((3, 4, 5, 2), -1, (3, 4, 5)), ((4, 3, 6), 1, (4, 3))]
)
def test_masked_training_matches_numpy_and_masked_values_stay_out(shape, axis, mask_shape, jit, backend):
    momentum = 0.8
    layer = randomized(BatchNorm(axis=axis, momentum=momentum), shape)
    gamma, beta = numpy(layer.gamma), numpy(layer.beta)
    moving_mean = numpy(layer.moving_mean)
    x = images(shape)
    mask = np.random.default_rng(7).random(mask_shape) < 0.6
    mask[0] = True
    x[~references.selection(mask, shape)] = np.nan  # masked values never enter a sum
    mean, variance = references.masked_moments(x, mask, axis)
    expected = references.batch_norm(x, mean, variance, gamma, beta, axis, EPSILON)
    outputs = training_call(backend, layer, jit)(x, mask)
    selected = references.selection(mask, shape)
    np.testing.assert_allclose(outputs[selected], expected[selected], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        numpy(layer.moving_mean), momentum * moving_mean + (1 - momentum) * mean, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_renorm_training_matches_numpy_over_steps(masked, jit, backend):
    clipping = {"rmax": 1.3, "rmin": 0.8, "dmax": 0.25}
    settings = dict(epsilon=EPSILON, momentum=0.9, renorm_momentum=0.7)
    shape = (4, 5, 3)
    layer = randomized(
        BatchNorm(renorm=True, renorm_clipping=clipping, momentum=0.9, renorm_momentum=0.7), shape
    )
    statistics = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")
    state = {name: numpy(getattr(layer, name)).astype(np.float64) for name in statistics}
    call = training_call(backend, layer, jit)
    hit = set()
    for step in range(3):
        x = images(shape, seed=10 + step, loc=step - 1.0, scale=0.5 + step)
        mask = np.random.default_rng(step).random(shape[:-1]) < 0.7 if masked else None
        if masked:
            mask[0] = True
        expected, state, clipped = references.renorm_step(
            x, state, numpy(layer.gamma), numpy(layer.beta), -1, clipping, mask=mask, **settings
        )
        hit.update(bound for bound, was_hit in clipped.items() if was_hit)
        np.testing.assert_allclose(call(x, mask), expected, rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
        for name in statistics:
            np.testing.assert_allclose(
                numpy(getattr(layer, name)), state[name], rtol=1e-5, atol=1e-5, err_msg=name
            )
    assert hit == {"rmin", "rmax", "dmax"}


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_keeps_float32_statistics_and_outputs_compute_dtype(policy, compute_dtype, backend):
    shape = (4, 5, 5, 3)
    x = keras.ops.cast(images(shape), compute_dtype)
    rounded = numpy(keras.ops.cast(x, "float32"))
    layer = randomized(BatchNorm(dtype=policy, momentum=0.0), shape)
    gamma, beta = numpy(layer.gamma), numpy(layer.beta)
    for variable in layer.variables:
        assert variable.dtype == "float32", variable.path
    outputs = backend.training_call(layer, jit=True)(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == compute_dtype
    # float32 statistics of the (rounded) input: a variance computed in the
    # compute dtype is off by 2.9e-4 (float16) / 2.1e-3 (bfloat16) relative.
    mean, variance = references.batch_moments(rounded, -1)
    np.testing.assert_allclose(numpy(layer.moving_variance), variance, rtol=1e-5)
    np.testing.assert_allclose(numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-6)
    rounding = 2.0**-11 if compute_dtype == "float16" else 2.0**-8
    expected = references.batch_norm(rounded, mean, variance, gamma, beta, -1, EPSILON)
    np.testing.assert_allclose(
        numpy(keras.ops.cast(outputs, "float32")), expected, rtol=rounding, atol=1e-5
    )


@pytest.mark.parametrize("axis", [-1, (1, 2, 3)])
def test_layer_norm_matches_keras_and_stays_accurate_when_mean_dwarfs_std(axis, backend):
    shape = (4, 5, 6, 3)
    x = keras.ops.convert_to_tensor(images(shape))
    ours = randomized(LayerNorm(axis=axis, param_axis=axis), shape)
    theirs = keras.layers.LayerNormalization(axis=list(axis) if isinstance(axis, tuple) else axis)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(
        numpy(backend.compiled(ours.__call__)(x)), numpy(theirs(x)), atol=1e-5, rtol=1e-5
    )
    big = (1e4 + 1e-2 * np.random.default_rng(2).normal(size=(2, 64))).astype("float32")
    accurate = LayerNorm(epsilon=1e-12)
    accurate.build(big.shape)  # variables are created outside the compiled region
    y = numpy(backend.compiled(accurate.__call__)(keras.ops.convert_to_tensor(big))).astype(np.float64)
    np.testing.assert_allclose(y.std(-1), 1.0, rtol=0.01)


def test_skip_init_is_alpha_times_input_with_the_inner_product_gradient(backend):
    x = images((2, 3, 4))
    layer = SkipInit()
    layer.build(x.shape)
    layer.alpha.assign(0.7)
    np.testing.assert_allclose(numpy(layer(x)), 0.7 * x, rtol=1e-6)
    _, gradient = backend.gradients(layer, x, keras.ops.sum)
    np.testing.assert_allclose(gradient, x.astype(np.float64).sum(), rtol=1e-5)


# What `from tests.backend_suite.layers import *` gives a backend's test file:
# every test above, collected there under its node ids.
__all__ = [name for name in list(globals()) if name.startswith("test_")]
