"""`BatchNorm(...)(x, mask=...)` against NumPy (float64), float64 autodiff of
the masked formula, and Keras' own `keras.layers.BatchNormalization` with the
same weights.

Keras' rule, which these tests pin down: the mask has the input's shape
without its last axis (or 1 on an axis to broadcast along it); it is expanded
on the last axis, and in training only the values where it is True enter the
batch statistics, while every value is normalized with them.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo.layers import BatchNorm
from tests import references
from tests.references import feature_shape, reduction_axes, selection
from tests.references import masked_moments as numpy_masked_moments

EPSILON = 1e-3
MOMENTUM = 0.8
numpy_normalize = functools.partial(references.batch_norm, epsilon=EPSILON)

# name: (input shape, feature axis, mask shape)
CASES = {
    "sequence": ((4, 6, 3), -1, (4, 6)),
    # 4-D: without a mask this takes the fused kernel.
    "image": ((3, 4, 5, 2), -1, (3, 4, 5)),
    # Expanded on the last axis, the mask then differs per channel.
    "channels_first": ((4, 3, 6), 1, (4, 3)),
    "image_channels_first": ((3, 2, 4, 5), 1, (3, 2, 4)),
    # Keras' test_masked_broadcast_normalization: size 1 broadcasts.
    "broadcast": ((2, 3, 4, 5), -1, (2, 3, 1)),
}


def random_mask(shape, seed, fraction=0.6):
    mask = np.random.default_rng(seed).random(shape) < fraction
    mask[0] = True  # no channel without a selected value by chance
    return mask


def layer_pair(input_shape, axis, seed=0, **kwargs):
    """Our layer with random weights and statistics, and Keras' with the same."""
    ours = BatchNorm(axis=axis, momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
    ours.build(input_shape)
    rng = np.random.default_rng(seed)
    ours.set_weights(
        [
            rng.uniform(0.5, 2.0, w.shape).astype("float32")
            if "variance" in w.path or "stddev" in w.path or "gamma" in w.path
            else rng.normal(size=w.shape).astype("float32")
            for w in ours.weights
        ]
    )
    theirs = keras.layers.BatchNormalization(axis=axis, momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
    theirs.build(input_shape)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def training_call(layer, jit_compile):
    call = lambda x, mask: layer(x, training=True, mask=mask)  # noqa: E731
    return tf.function(call, jit_compile=True) if jit_compile else call


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("case", CASES)
def test_masked_training_matches_numpy_and_keras_over_steps(case, jit_compile):
    """Three training steps with different data and masks: the outputs (of
    every value, masked or not) and the moving statistics follow NumPy's
    statistics of the selected values, and equal Keras' layer."""
    shape, axis, mask_shape = CASES[case]
    ours, theirs = layer_pair(shape, axis)
    call = training_call(ours, jit_compile)
    gamma, beta = ours.gamma.numpy(), ours.beta.numpy()
    moving_mean, moving_variance = ours.moving_mean.numpy(), ours.moving_variance.numpy()
    for step in range(3):
        rng = np.random.default_rng(10 + step)
        x = rng.normal(1.5, 2.0, shape).astype("float32")
        mask = random_mask(mask_shape, 20 + step)
        mean, variance = numpy_masked_moments(x, mask, axis)
        outputs = np.asarray(call(tf.constant(x), tf.constant(mask)))
        np.testing.assert_allclose(
            outputs, numpy_normalize(x, mean, variance, gamma, beta, axis), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            outputs, theirs(x, training=True, mask=mask), rtol=1e-5, atol=1e-5
        )
        moving_mean = MOMENTUM * moving_mean + (1 - MOMENTUM) * mean
        moving_variance = MOMENTUM * moving_variance + (1 - MOMENTUM) * variance
    np.testing.assert_allclose(ours.moving_mean.numpy(), moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), moving_variance, rtol=1e-5, atol=1e-6)
    for mine, keras_weight in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, keras_weight, rtol=1e-5, atol=1e-6)


def float64_masked_gradients(x, mask, gamma, beta, upstream, axis):
    """Autodiff, in float64, of the masked formula written out plainly:
    gradients of sum(upstream * y) w.r.t. x, gamma and beta."""
    selected = tf.constant(selection(mask, x.shape))
    x, upstream = (tf.constant(v, tf.float64) for v in (x, upstream))
    gamma, beta = (tf.constant(v, tf.float64) for v in (gamma, beta))
    axes = reduction_axes(len(x.shape), axis)
    shape = feature_shape(len(x.shape), axis)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        count = tf.reduce_sum(tf.cast(selected, tf.float64), axes, keepdims=True)
        mean = tf.reduce_sum(tf.where(selected, x, 0.0), axes, keepdims=True) / count
        variance = tf.reduce_sum(tf.where(selected, (x - mean) ** 2, 0.0), axes, keepdims=True) / count
        y = tf.reshape(gamma, shape) * (x - mean) / tf.sqrt(variance + EPSILON) + tf.reshape(beta, shape)
        loss = tf.reduce_sum(y * upstream)
    return [g.numpy() for g in tape.gradient(loss, [x, gamma, beta])]


def training_gradients(layer, x, mask, upstream, jit_compile=False):
    def gradients(x, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True, mask=mask) * upstream)
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    if jit_compile:
        gradients = tf.function(gradients, jit_compile=True)
    return [g.numpy() for g in gradients(tf.constant(x), tf.constant(mask))]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("case", ["sequence", "image", "channels_first", "broadcast"])
def test_masked_gradients_equal_float64_autodiff_of_the_masked_formula(case, jit_compile):
    """The closed-form masked gradient (masked values get only the direct
    term) against float64 autodiff of the formula, and against Keras'
    float32 autodiff."""
    shape, axis, mask_shape = CASES[case]
    ours, theirs = layer_pair(shape, axis)
    rng = np.random.default_rng(30)
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    mask = random_mask(mask_shape, 31)
    got = training_gradients(ours, x, mask, upstream, jit_compile)
    expected = float64_masked_gradients(x, mask, ours.gamma.numpy(), ours.beta.numpy(), upstream, axis)
    keras_gradients = training_gradients(theirs, x, mask, upstream)
    for name, g, e, k in zip(("x", "gamma", "beta"), got, expected, keras_gradients):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * np.abs(e).max(), err_msg=name)
        np.testing.assert_allclose(g, k, rtol=1e-4, atol=1e-5 * np.abs(e).max(), err_msg=name)


def shifted_padded_batch(shape, mask_shape, seed):
    """Mean 1e4, std 1e-2, with the masked positions zero (padding): far from
    the data, as padding usually is."""
    rng = np.random.default_rng(seed)
    x = (1e4 + 1e-2 * rng.normal(size=shape)).astype("float32")
    mask = random_mask(mask_shape, seed + 1)
    x[~selection(mask, shape)] = 0.0
    return x, mask


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("shape, mask_shape", [((32, 8, 3), (32, 8)), ((8, 4, 4, 3), (8, 4, 4))])
def test_masked_statistics_stay_accurate_when_mean_dwarfs_std(shape, mask_shape, jit_compile):
    """One float32 ulp of 1e4 is 1e-3, a tenth of the std: the variance of the
    selected values is within 1% of NumPy's float64 variance, and the
    selected outputs have mean 0 and std 1."""
    layer = BatchNorm(momentum=0.0)  # the moving variance becomes the batch variance
    update = training_call(layer, jit_compile)
    normalize = training_call(BatchNorm(epsilon=1e-12), jit_compile)
    for seed in range(0, 10, 2):
        x, mask = shifted_padded_batch(shape, mask_shape, seed)
        update(tf.constant(x), tf.constant(mask))
        mean, variance = numpy_masked_moments(x, mask, -1)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=0.01, err_msg=f"{seed=}")
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-7, err_msg=f"{seed=}")
        y = np.asarray(normalize(tf.constant(x), tf.constant(mask)), np.float64)
        selected = y[selection(mask, shape)].reshape(-1, shape[-1])
        np.testing.assert_allclose(selected.std(axis=0), 1.0, rtol=0.01, err_msg=f"{seed=}")
        np.testing.assert_allclose(selected.mean(axis=0), 0.0, atol=0.01, err_msg=f"{seed=}")


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_masked_gradients_stay_accurate_when_mean_dwarfs_std(jit_compile):
    shape, mask_shape = (16, 6, 3), (16, 6)
    x, mask = shifted_padded_batch(shape, mask_shape, seed=40)
    upstream = np.random.default_rng(41).normal(size=shape).astype("float32")
    layer = BatchNorm(epsilon=EPSILON)
    layer.build(shape)
    layer.gamma.assign([0.5, 1.0, 2.0])
    got = training_gradients(layer, x, mask, upstream, jit_compile)
    expected = float64_masked_gradients(x, mask, layer.gamma.numpy(), np.zeros(3), upstream, -1)
    for name, g, e in zip(("x", "gamma", "beta"), got, expected):
        # relative to the gradient's own scale (|dx| ~ gamma / std ~ 30)
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * np.abs(e).max(), err_msg=name)


@pytest.mark.parametrize(
    "case, jit_compile, renorm",
    [("sequence", False, False), ("image", True, False), ("image", False, True), ("sequence", True, True)],
    ids=["sequence-eager", "image-xla", "image-eager-renorm", "sequence-xla-renorm"],
)
def test_a_fully_masked_batch_changes_no_statistic_and_gives_keras_finite_outputs(
    case, jit_compile, renorm
):
    """Nothing selected: the statistics are mean 0 and variance 0, as Keras'
    (so the outputs equal Keras'), the moving statistics stay as they were
    (Keras moves them towards 0), and the gradients are those of the affine
    map gamma * x / sqrt(epsilon) + beta, finite."""
    shape, axis, mask_shape = CASES[case]
    ours, theirs = layer_pair(shape, axis, renorm=renorm)
    before = [w.numpy() for w in ours.non_trainable_weights]
    rng = np.random.default_rng(50)
    x = rng.normal(size=shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    mask = np.zeros(mask_shape, bool)
    outputs = training_call(ours, jit_compile)(tf.constant(x), tf.constant(mask))
    assert np.isfinite(outputs).all()
    np.testing.assert_allclose(outputs, theirs(x, training=True, mask=mask), rtol=1e-5, atol=1e-4)
    for value, variable in zip(before, ours.non_trainable_weights):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    moved = [np.abs(w.numpy() - v).max() for w, v in zip(theirs.non_trainable_weights, before)]
    assert min(moved) > 1e-3, "Keras' statistics did not move: the contrast above is void"

    got = training_gradients(ours, x, mask, upstream, jit_compile)
    gamma, beta = ours.gamma.numpy(), ours.beta.numpy()
    axes = reduction_axes(len(shape), axis)
    fshape = feature_shape(len(shape), axis)
    if renorm:  # Keras' r and d for mean 0, variance 0
        renorm_stddev = np.maximum(ours.renorm_stddev.numpy(), np.sqrt(EPSILON))
        r = np.sqrt(EPSILON) / renorm_stddev
        d = -ours.renorm_mean.numpy() / renorm_stddev
    else:
        r, d = 1.0, 0.0
    standardized = x / np.sqrt(EPSILON)
    expected = [
        upstream * np.reshape(r * gamma, fshape) / np.sqrt(EPSILON),
        (upstream * (standardized * np.reshape(r, fshape) + np.reshape(d, fshape))).sum(axes),
        upstream.sum(axes),
    ]
    for name, g, e in zip(("x", "gamma", "beta"), got, expected):
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("layer_class", [BatchNorm, keras.layers.BatchNormalization])
def test_mask_reaches_the_next_layer_so_padding_changes_nothing(layer_class):
    """Embedding(mask_zero=True) -> BatchNorm -> LSTM in training mode: two
    sequences of 4 tokens padded to 7 give the LSTM the same final state and
    the BatchNorm the same statistics as the unpadded batch (the mask is
    used, and passed on as Keras passes it)."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(20, 5, mask_zero=True)(tokens)
    normalized = layer_class(name="bn")(embedded)
    model = keras.Model(tokens, keras.layers.LSTM(4)(normalized))
    unpadded = np.array([[3, 7, 1, 9], [4, 4, 12, 2]], "int32")
    padded = np.pad(unpadded, ((0, 0), (0, 3)))
    bn = model.get_layer("bn")
    results = []
    for batch in (unpadded, padded):
        bn.moving_mean.assign(np.zeros(5))
        results.append((model(batch, training=True).numpy(), bn.moving_mean.numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-6)
    mask = tf.constant(padded != 0)
    assert bn.compute_mask(tf.zeros((2, 7, 5)), mask) is mask


@pytest.mark.parametrize("mask_value", [0.0, 1.0])
def test_fit_ignores_masked_values_as_in_keras_tests(mask_value):
    """Keras' test_bachnorm_ignore_masked_values: with Masking in front and
    momentum 0, fit leaves the moving statistics of the unmasked values
    (mean [1.5, 5], variance [0.25, 0])."""
    padded = np.array(
        [[[1, 5], [2, 5], [mask_value, mask_value], [mask_value, mask_value]]] * 10, "float32"
    )
    inputs = keras.Input((None, 2))
    masked = keras.layers.Masking(mask_value=mask_value)(inputs)
    model = keras.Model(inputs, BatchNorm(momentum=0.0, name="bn")(masked))
    model.compile("rmsprop", loss="mse")
    model.fit(padded, padded, batch_size=10, epochs=2, verbose=0)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), [1.5, 5.0], atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), [0.25, 0.0], atol=1e-6)


def test_mask_changes_nothing_in_inference_with_frozen_stats_or_not_trainable():
    shape, axis, mask_shape = CASES["sequence"]
    ours, _ = layer_pair(shape, axis)
    x = np.random.default_rng(60).normal(size=shape).astype("float32")
    mask = random_mask(mask_shape, 61)
    inference = ours(x, training=False).numpy()
    before = [w.numpy() for w in ours.weights]
    np.testing.assert_array_equal(ours(x, training=False, mask=mask), inference)
    ours.frozen_stats = True
    np.testing.assert_array_equal(ours(x, training=True, mask=mask), inference)
    ours.frozen_stats, ours.trainable = False, False
    np.testing.assert_array_equal(ours(x, training=True, mask=mask), inference)
    for value, weight in zip(before, ours.weights):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_non_finite_masked_values_do_not_reach_the_statistics():
    """Padding with inf or NaN: the selected values' statistics, as in Keras."""
    shape, axis, mask_shape = CASES["sequence"]
    ours, theirs = layer_pair(shape, axis, seed=3)
    x = np.random.default_rng(70).normal(size=shape).astype("float32")
    mask = random_mask(mask_shape, 71)
    x[~mask] = np.inf
    x[~mask, 1] = np.nan
    initial = ours.moving_mean.numpy(), ours.moving_variance.numpy()
    ours(x, training=True, mask=mask)
    theirs(x, training=True, mask=mask)
    for initial_value, batch_value, statistic in zip(
        initial, numpy_masked_moments(x, mask, axis), (ours.moving_mean, ours.moving_variance)
    ):
        expected = MOMENTUM * initial_value + (1 - MOMENTUM) * batch_value
        np.testing.assert_allclose(statistic.numpy(), expected, rtol=1e-5, atol=1e-6)
    for mine, keras_weight in zip(ours.non_trainable_weights, theirs.non_trainable_weights):
        np.testing.assert_allclose(mine.numpy(), keras_weight.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer_class", [BatchNorm, keras.layers.BatchNormalization])
def test_a_mask_of_the_inputs_rank_is_a_value_error_as_in_keras(layer_class, training):
    layer = layer_class()
    x = np.ones((2, 3, 4), "float32")
    with pytest.raises(ValueError, match="one (axis|dimension) less"):
        layer(x, training=training, mask=np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match="one (axis|dimension) less"):
        layer(x, training=training, mask=np.ones((2,), bool))


def test_a_mask_that_does_not_broadcast_is_a_value_error_naming_the_shapes():
    """Keras fails inside TensorFlow's broadcast (InvalidArgumentError)."""
    with pytest.raises(ValueError, match=r"\(2, 2\) does not broadcast to the input of shape \(2, 3, 4\)"):
        BatchNorm()(np.ones((2, 3, 4), "float32"), training=True, mask=np.ones((2, 2), bool))


@pytest.mark.parametrize("synchronized", [False, True])
def test_keras_fully_masked_zeros_give_zeros(synchronized):
    """Keras' test_input_fully_masked (synchronized=True outside a strategy
    is ordinary batch normalization)."""
    layer = BatchNorm(scale=False, center=False, synchronized=synchronized)
    outputs = layer(np.zeros((4, 5)), mask=np.zeros((4,), "float32"), training=True)
    np.testing.assert_array_equal(outputs, np.zeros((4, 5)))
    np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)
