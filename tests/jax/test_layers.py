"""normzoo.layers under Keras' JAX backend, eagerly and under `jax.jit`,
against the NumPy float64 references the TensorFlow tests use
(tests/references.py) and Keras' own layers on JAX.

Run in a process whose Keras backend is JAX (tests/test_backends.py spawns
it): `KERAS_BACKEND=jax python -m pytest tests/jax`.
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from normzoo.layers import BatchNorm, LayerNorm, SkipInit
from tests import references

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="run with KERAS_BACKEND=jax (tests/test_backends.py)"
)

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


def training_call(layer, jit):
    """(x, mask=None) -> layer(x, training=True, mask=mask) as a NumPy array,
    eagerly or through `jax.jit` of `stateless_call` (what `Model.fit`
    compiles); the moving statistics are updated either way."""
    if not jit:
        return lambda x, mask=None: np.asarray(layer(x, training=True, mask=mask))

    @jax.jit
    def step(trainable, non_trainable, x, mask):
        return layer.stateless_call(trainable, non_trainable, x, training=True, mask=mask)

    def run(x, mask=None):
        if not layer.built:
            layer.build(x.shape)
        outputs, non_trainable = step(
            [v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables],
            x,
            mask,
        )
        for variable, value in zip(layer.non_trainable_variables, non_trainable):
            variable.assign(value)
        return np.asarray(outputs)

    return run


def training_gradients(layer, x, upstream, mask=None):
    """Gradients of sum(upstream * layer(x, training=True)) w.r.t. x, gamma
    and beta, by `jax.grad` under `jax.jit`."""

    def loss(x, trainable):
        non_trainable = [v.value for v in layer.non_trainable_variables]
        outputs, _ = layer.stateless_call(trainable, non_trainable, x, training=True, mask=mask)
        return jnp.sum(outputs.astype("float32") * upstream)

    d_x, (d_gamma, d_beta) = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        x, [v.value for v in layer.trainable_variables]
    )
    return [np.asarray(g) for g in (d_x, d_gamma, d_beta)]


JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


@JIT
@pytest.mark.parametrize("axis, shape", [(-1, (4, 5, 6, 3)), (1, (4, 3, 5, 6)), (-1, (8, 7))])
def test_training_follows_the_formula_and_the_moving_statistics_the_momentum(axis, shape, jit):
    momentum = 0.9
    layer = randomized(BatchNorm(axis=axis, momentum=momentum), shape)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    moving_mean, moving_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    call = training_call(layer, jit)
    for seed in range(2):
        x = images(shape, seed=seed)
        mean, variance = references.batch_moments(x, axis)
        expected = references.batch_norm(x, mean, variance, gamma, beta, axis, EPSILON)
        np.testing.assert_allclose(call(x), expected, atol=1e-5, rtol=1e-5)
        moving_mean = momentum * moving_mean + (1 - momentum) * mean
        moving_variance = momentum * moving_variance + (1 - momentum) * variance
    np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), moving_variance, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frozen", [False, True], ids=["inference", "frozen_stats"])
def test_moving_statistics_normalize_in_inference_and_with_frozen_stats(frozen):
    shape = (4, 5, 6, 3)
    layer = randomized(BatchNorm(frozen_stats=frozen), shape)
    before = [v.numpy() for v in layer.weights]
    x = images(shape)
    expected = references.batch_norm(x, *(v.numpy() for v in (
        layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta)), -1, EPSILON)
    outputs = training_call(layer, jit=True)(x) if frozen else np.asarray(layer(x))
    np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=1e-5)
    for value, weight in zip(before, layer.weights):
        np.testing.assert_array_equal(weight.numpy(), value, err_msg=weight.path)


@pytest.mark.parametrize(
    "shape, axis", [((6, 4, 4, 3), -1), ((6, 3, 4, 4), 1), ((16, 5), -1), ((4, 3, 2, 2, 3), -1)]
)
def test_jit_gradients_equal_the_batch_norm_formula_for_every_rank(shape, axis):
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    layer = randomized(BatchNorm(axis=axis), shape)
    got = training_gradients(layer, x, upstream)
    expected = references.batch_norm_gradients(x, layer.gamma.numpy(), upstream, EPSILON, axis)
    for name, g, e in zip(("x", "gamma", "beta"), got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


@JIT
@pytest.mark.parametrize("shape", [(64, 4, 4, 3), (128, 3), (16, 8, 3)])
def test_variance_is_accurate_and_non_negative_when_mean_dwarfs_std(shape, jit):
    """Mean 1e4, std 1e-2 in float32 (one ulp of 1e4 is 1e-3)."""
    layer = BatchNorm(momentum=0.0)  # moving variance becomes the batch variance
    update = training_call(layer, jit)
    normalize = training_call(BatchNorm(epsilon=1e-12), jit)
    axes = tuple(range(len(shape) - 1))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = (1e4 + 1e-2 * rng.normal(size=shape)).astype("float32")
        update(x)
        _, expected = references.batch_moments(x, -1)
        got = layer.moving_variance.numpy()
        assert (got >= 0).all()
        np.testing.assert_allclose(got, expected, rtol=0.01, err_msg=f"seed {seed}")
        y = normalize(x).astype(np.float64)
        np.testing.assert_allclose(y.std(axis=axes), 1.0, rtol=0.01, err_msg=f"seed {seed}")
        np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=0.01, err_msg=f"seed {seed}")


def test_gradients_stay_accurate_when_mean_dwarfs_std():
    rng = np.random.default_rng(5)
    shape = (8, 4, 4, 3)
    x = (1e4 + 1e-2 * rng.normal(size=shape)).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    layer = randomized(BatchNorm(epsilon=1e-12), shape)
    got = training_gradients(layer, x, upstream)
    expected = references.batch_norm_gradients(x, layer.gamma.numpy(), upstream, 1e-12, -1)
    for name, g, e in zip(("x", "gamma", "beta"), got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * np.abs(e).max(), err_msg=name)


@JIT
def test_non_finite_batch_statistic_never_enters_the_moving_averages(jit):
    shape = (4, 3, 3, 3)
    layer = randomized(BatchNorm(momentum=0.5), shape)
    before_mean, before_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    x = images(shape)
    x[1, 2, 0, 0] = np.nan
    x[0, 0, 1, 2] = np.inf
    training_call(layer, jit)(x)
    mean, variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    np.testing.assert_array_equal(mean[[0, 2]], before_mean[[0, 2]])
    np.testing.assert_array_equal(variance[[0, 2]], before_variance[[0, 2]])
    batch_mean, batch_variance = references.batch_moments(x[..., 1:2], -1)
    np.testing.assert_allclose(mean[1], 0.5 * before_mean[1] + 0.5 * batch_mean[0], rtol=1e-5)
    np.testing.assert_allclose(variance[1], 0.5 * before_variance[1] + 0.5 * batch_variance[0], rtol=1e-5)


@JIT
@pytest.mark.parametrize(
    "shape, axis, mask_shape", [((4, 6, 3), -1, (4, 6)), ((3, 4, 5, 2), -1, (3, 4, 5)), ((4, 3, 6), 1, (4, 3))]
)
def test_masked_training_matches_numpy_and_masked_values_stay_out(shape, axis, mask_shape, jit):
    momentum = 0.8
    layer = randomized(BatchNorm(axis=axis, momentum=momentum), shape)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    moving_mean = layer.moving_mean.numpy()
    x = images(shape)
    mask = np.random.default_rng(7).random(mask_shape) < 0.6
    mask[0] = True
    x[~references.selection(mask, shape)] = np.nan  # masked values never enter a sum
    mean, variance = references.masked_moments(x, mask, axis)
    expected = references.batch_norm(x, mean, variance, gamma, beta, axis, EPSILON)
    outputs = training_call(layer, jit)(x, mask)
    selected = references.selection(mask, shape)
    np.testing.assert_allclose(outputs[selected], expected[selected], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), momentum * moving_mean + (1 - momentum) * mean, rtol=1e-5, atol=1e-6
    )


@JIT
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_renorm_training_matches_numpy_over_steps(masked, jit):
    clipping = {"rmax": 1.3, "rmin": 0.8, "dmax": 0.25}
    settings = dict(epsilon=EPSILON, momentum=0.9, renorm_momentum=0.7)
    shape = (4, 5, 3)
    layer = randomized(
        BatchNorm(renorm=True, renorm_clipping=clipping, momentum=0.9, renorm_momentum=0.7), shape
    )
    statistics = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")
    state = {name: getattr(layer, name).numpy().astype(np.float64) for name in statistics}
    call = training_call(layer, jit)
    hit = set()
    for step in range(3):
        x = images(shape, seed=10 + step, loc=step - 1.0, scale=0.5 + step)
        mask = np.random.default_rng(step).random(shape[:-1]) < 0.7 if masked else None
        if masked:
            mask[0] = True
        expected, state, clipped = references.renorm_step(
            x, state, layer.gamma.numpy(), layer.beta.numpy(), -1, clipping, mask=mask, **settings
        )
        hit.update(bound for bound, was_hit in clipped.items() if was_hit)
        np.testing.assert_allclose(call(x, mask), expected, rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
        for name in statistics:
            np.testing.assert_allclose(
                getattr(layer, name).numpy(), state[name], rtol=1e-5, atol=1e-5, err_msg=name
            )
    assert hit == {"rmin", "rmax", "dmax"}


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_keeps_float32_statistics_and_outputs_compute_dtype(policy, compute_dtype):
    shape = (4, 5, 5, 3)
    x = images(shape).astype(compute_dtype)
    layer = randomized(BatchNorm(dtype=policy, momentum=0.0), shape)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    for variable in layer.variables:
        assert variable.dtype == "float32", variable.path
    outputs = training_call(layer, jit=True)(x)
    assert outputs.dtype == compute_dtype
    # float32 statistics of the (rounded) input: a variance computed in the
    # compute dtype is off by 2.9e-4 (float16) / 2.1e-3 (bfloat16) relative.
    mean, variance = references.batch_moments(x.astype("float32"), -1)
    np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    rounding = 2.0**-11 if compute_dtype == "float16" else 2.0**-8
    expected = references.batch_norm(x.astype("float32"), mean, variance, gamma, beta, -1, EPSILON)
    np.testing.assert_allclose(outputs.astype("float32"), expected, rtol=rounding, atol=1e-5)


def test_fit_with_jit_compile_trains_and_matches_keras_batch_normalization():
    """One epoch of `fit(jit_compile=True)` with our layer and with Keras'
    (same initial weights): equal weights and moving statistics after."""
    x = images((16, 6, 6, 3))
    y = np.random.default_rng(0).integers(0, 2, 16)

    def model(norm):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 6, 3))
        h = keras.layers.Conv2D(4, 3)(inputs)
        h = norm()(h)
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
        return keras.Model(inputs, keras.layers.Dense(2)(h))

    trained = []
    for norm in (BatchNorm, keras.layers.BatchNormalization):
        m = model(norm)
        m.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        trained.append(m.get_weights())
    for ours, theirs in zip(*trained):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, (1, 2, 3)])
def test_layer_norm_matches_keras_and_stays_accurate_when_mean_dwarfs_std(axis):
    shape = (4, 5, 6, 3)
    x = images(shape)
    ours = randomized(LayerNorm(axis=axis, param_axis=axis), shape)
    theirs = keras.layers.LayerNormalization(axis=list(axis) if isinstance(axis, tuple) else axis)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(jax.jit(ours.__call__)(x), theirs(x), atol=1e-5, rtol=1e-5)
    big = (1e4 + 1e-2 * np.random.default_rng(2).normal(size=(2, 64))).astype("float32")
    y = np.asarray(jax.jit(LayerNorm(epsilon=1e-12).__call__)(big), np.float64)
    np.testing.assert_allclose(y.std(-1), 1.0, rtol=0.01)


def test_skip_init_is_alpha_times_input_with_the_inner_product_gradient():
    x = images((2, 3, 4))
    layer = SkipInit()
    layer.build(x.shape)
    layer.alpha.assign(0.7)
    np.testing.assert_allclose(layer(x), 0.7 * x, rtol=1e-6)

    def loss(alpha):
        outputs, _ = layer.stateless_call([alpha], [], x)
        return jnp.sum(outputs)

    gradient = jax.jit(jax.grad(loss))(layer.alpha.value)
    np.testing.assert_allclose(gradient, x.astype(np.float64).sum(), rtol=1e-5)
