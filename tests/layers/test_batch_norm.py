"""normzoo.layers.BatchNorm on one device, against NumPy and Keras."""

import functools
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo.layers import BatchNorm, LayerNorm
from tests import references
from tests.references import batch_moments as numpy_batch_moments
from tests.references import batch_norm_gradients as numpy_batch_norm_gradients

EPSILON = 1e-3
numpy_batch_norm = functools.partial(references.batch_norm, epsilon=EPSILON)


def built_layer(input_shape, seed=0, **kwargs):
    """A BatchNorm with random gamma, beta and moving statistics."""
    layer = BatchNorm(**kwargs)
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    channels = input_shape[kwargs.get("axis", -1)]
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_mean.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 3.0, channels).astype("float32"))
    return layer


def variable_values(layer):
    return {v.path: np.array(v.numpy()) for v in layer.variables}


def images(shape=(4, 5, 6, 3), seed=1, loc=1.5, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape).astype("float32")


@pytest.mark.parametrize("axis, shape", [(-1, (4, 5, 6, 3)), (1, (4, 3, 5, 6)), (-1, (8, 7))])
def test_training_normalizes_with_biased_batch_statistics_per_feature(axis, shape):
    x = images(shape)
    layer = built_layer(shape, axis=axis)
    expected_mean, expected_variance = numpy_batch_moments(x, axis)
    expected = numpy_batch_norm(
        x, expected_mean, expected_variance, layer.gamma.numpy(), layer.beta.numpy(), axis
    )
    np.testing.assert_allclose(layer(x, training=True), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("axis, shape", [(-1, (4, 5, 6, 3)), (1, (4, 3, 5, 6))])
def test_moving_statistics_follow_the_momentum_formula(axis, shape):
    momentum = 0.9
    layer = built_layer(shape, axis=axis, momentum=momentum)
    moving_mean, moving_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    for step in range(3):
        x = images(shape, seed=10 + step)
        layer(x, training=True)
        mean, variance = numpy_batch_moments(x, axis)
        moving_mean = momentum * moving_mean + (1 - momentum) * mean
        moving_variance = momentum * moving_variance + (1 - momentum) * variance
    np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), moving_variance, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [False, None])
@pytest.mark.parametrize("axis, shape", [(-1, (4, 5, 6, 3)), (1, (4, 3, 5, 6))])
def test_inference_uses_moving_statistics_and_updates_nothing(axis, shape, training):
    x = images(shape)
    layer = built_layer(shape, axis=axis)
    before = variable_values(layer)
    expected = numpy_batch_norm(
        x,
        layer.moving_mean.numpy(),
        layer.moving_variance.numpy(),
        layer.gamma.numpy(),
        layer.beta.numpy(),
        axis,
    )
    np.testing.assert_allclose(layer(x, training=training), expected, atol=1e-5, rtol=1e-5)
    after = variable_values(layer)
    for path in before:
        np.testing.assert_array_equal(after[path], before[path])


def test_inference_output_of_a_sample_is_independent_of_batch_composition():
    """Article 002: in inference, near-copies of one image in a batch must get
    the prediction they get inside a shuffled batch of varied images."""
    shape = (8, 5, 5, 3)
    layer = built_layer(shape)
    rng = np.random.default_rng(3)
    base = rng.normal(size=(1, 5, 5, 3)).astype("float32")
    near_copies = base + 1e-3 * rng.normal(size=shape).astype("float32")
    varied = rng.normal(size=shape).astype("float32") * 3
    varied[5] = near_copies[2]
    permutation = rng.permutation(8)
    out_copies = np.asarray(layer(near_copies, training=False))
    out_varied = np.asarray(layer(varied[permutation], training=False))
    position = int(np.where(permutation == 5)[0][0])
    np.testing.assert_array_equal(out_copies[2], out_varied[position])
    # The same comparison in training mode differs: that is what inference
    # mode exists to prevent.
    train_copies = np.asarray(layer(near_copies, training=True))
    train_varied = np.asarray(layer(varied[permutation], training=True))
    assert np.abs(train_copies[2] - train_varied[position]).max() > 0.1


def test_trainable_false_runs_in_inference_mode_and_updates_nothing():
    shape = (4, 5, 5, 3)
    x = images(shape)
    layer = built_layer(shape)
    inference = np.asarray(layer(x, training=False))
    layer.trainable = False
    before = variable_values(layer)
    np.testing.assert_array_equal(layer(x, training=True), inference)
    assert not layer.trainable_variables
    for path, value in variable_values(layer).items():
        np.testing.assert_array_equal(value, before[path])


@pytest.mark.parametrize("axis, shape", [(-1, (4, 5, 5, 3)), (1, (4, 3, 5, 5))])
def test_frozen_stats_uses_moving_statistics_in_training_and_gradient_is_the_affine_maps(
    axis, shape
):
    x = images(shape)
    layer = built_layer(shape, axis=axis, frozen_stats=True)
    before = variable_values(layer)
    upstream = images(shape, seed=7)
    x_tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)
        y = layer(x_tensor, training=True)
        loss = tf.reduce_sum(y * upstream)
    grad_x, grad_gamma, grad_beta = tape.gradient(loss, [x_tensor, layer.gamma, layer.beta])

    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    mean, variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    np.testing.assert_allclose(
        y, numpy_batch_norm(x, mean, variance, gamma, beta, axis), atol=1e-5, rtol=1e-5
    )
    bshape = [1] * x.ndim
    bshape[axis] = -1
    normalized = (x - mean.reshape(bshape)) / np.sqrt(variance.reshape(bshape) + EPSILON)
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    np.testing.assert_allclose(grad_gamma, (upstream * normalized).sum(reduce_axes), rtol=1e-4)
    np.testing.assert_allclose(grad_beta, upstream.sum(reduce_axes), rtol=1e-4)
    np.testing.assert_allclose(
        grad_x, upstream * (gamma / np.sqrt(variance + EPSILON)).reshape(bshape), rtol=1e-5
    )
    for path, value in variable_values(layer).items():
        np.testing.assert_array_equal(value, before[path])


def small_conv_model(batch_norm_factory, input_shape=(8, 8, 3), classes=4):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(inputs)
    x = batch_norm_factory()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs)


def classification_data(n=32, input_shape=(8, 8, 3), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (n,) + input_shape).astype("float32")
    y = rng.integers(0, classes, n)
    return x, y


def test_frozen_stats_keeps_statistics_bit_identical_through_fit_while_gamma_beta_learn():
    keras.utils.set_random_seed(0)
    model = small_conv_model(lambda: BatchNorm(name="bn"))
    x, y = classification_data()
    # Pretraining gives the statistics non-initial values.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    bn = model.get_layer("bn")
    bn.frozen_stats = True  # settable after construction; recompile as with `trainable`
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    mean, variance = np.array(bn.moving_mean.numpy()), np.array(bn.moving_variance.numpy())
    gamma, beta = np.array(bn.gamma.numpy()), np.array(bn.beta.numpy())
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), variance)
    assert np.abs(bn.gamma.numpy() - gamma).max() > 1e-4
    assert np.abs(bn.beta.numpy() - beta).max() > 1e-4


def _training_call(layer, jit_compile):
    """`layer(x, training=True)`, eagerly or inside an XLA-compiled function
    (where BatchNorm takes its composed, custom-gradient path)."""
    if jit_compile is None:
        return lambda x: layer(x, training=True)
    return tf.function(lambda x: layer(x, training=True), jit_compile=True)


# Eagerly, 4-D input takes the fused kernel, other ranks the composed
# formula; under XLA every rank takes the composed formula.
@pytest.mark.parametrize("jit_compile", [None, True], ids=["eager", "xla"])
@pytest.mark.parametrize("shape", [(64, 4, 4, 3), (32, 2, 2, 3), (128, 3), (16, 8, 3)])
def test_variance_is_accurate_and_non_negative_when_mean_dwarfs_std(shape, jit_compile):
    layer = BatchNorm(momentum=0.0)  # moving variance becomes the batch variance
    update = _training_call(layer, jit_compile)
    normalize = _training_call(BatchNorm(epsilon=1e-12), jit_compile)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x = (1e4 + 1e-2 * rng.normal(size=shape)).astype("float32")
        update(x)
        _, expected = numpy_batch_moments(x, -1)
        got = layer.moving_variance.numpy()
        assert (got >= 0).all()
        np.testing.assert_allclose(got, expected, rtol=0.01, err_msg=f"seed {seed}")
        # The normalized output has unit variance and zero mean per channel.
        y = np.asarray(normalize(x), np.float64)
        axes = tuple(range(len(shape) - 1))
        np.testing.assert_allclose(y.std(axis=axes), 1.0, rtol=0.01, err_msg=f"seed {seed}")
        np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=0.01, err_msg=f"seed {seed}")


def test_non_finite_batch_statistic_never_enters_the_moving_averages():
    shape = (4, 3, 3, 3)
    layer = built_layer(shape, momentum=0.5)
    before_mean, before_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    x = images(shape)
    x[1, 2, 0, 0] = np.nan
    x[0, 0, 1, 2] = np.inf
    layer(x, training=True)
    mean, variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    assert np.isfinite(mean).all() and np.isfinite(variance).all()
    np.testing.assert_array_equal(mean[[0, 2]], before_mean[[0, 2]])
    np.testing.assert_array_equal(variance[[0, 2]], before_variance[[0, 2]])
    with np.errstate(invalid="ignore"):  # inf - inf in the poisoned channels
        batch_mean, batch_variance = numpy_batch_moments(x, -1)
    np.testing.assert_allclose(mean[1], 0.5 * before_mean[1] + 0.5 * batch_mean[1], rtol=1e-5)
    np.testing.assert_allclose(
        variance[1], 0.5 * before_variance[1] + 0.5 * batch_variance[1], rtol=1e-5
    )


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_keeps_float32_variables_and_outputs_compute_dtype(policy, compute_dtype, monkeypatch):
    shape = (4, 5, 5, 3)
    x = images(shape).astype(compute_dtype)
    initial = built_layer(shape).get_weights()
    # The float32 layer on the same (rounded) input; momentum 0 makes the
    # moving statistics those of the batch.
    reference = BatchNorm(momentum=0.0)
    reference.build(shape)
    reference.set_weights(initial)
    expected = [np.asarray(reference(x.astype("float32"), training=t)) for t in (True, False)]
    statistics = {"moving_mean": reference.moving_mean.numpy(), "moving_variance": reference.moving_variance.numpy()}
    # Only the output's final rounding to the compute dtype differs: at most
    # half an ulp, 2^-11 (float16) or 2^-8 (bfloat16) relative, 2^-25 absolute
    # below float16's normal range; measured 4.7e-4 and 3.9e-3. The
    # statistics are float32 and equal (measured: bit for bit). A variance
    # computed in the compute dtype (the variant checked below, which a
    # 1e-2 / 5e-2 output tolerance and a moving_mean check let pass) puts
    # outputs 5.2e-5 (float16) and 3.6e-4 (bfloat16) beyond the rounding
    # bound, and moving_variance 2.9e-4 and 2.1e-3 (relative) off.
    rounding = 2.0**-11 if compute_dtype == "float16" else 2.0**-8

    def check():
        layer = BatchNorm(dtype=policy, momentum=0.0)
        layer.build(shape)
        layer.set_weights(initial)
        for variable in layer.variables:
            assert variable.dtype == "float32", variable.path
        for training, expected_outputs in zip((True, False), expected):
            y = layer(x, training=training)
            assert y.dtype == compute_dtype
            np.testing.assert_allclose(
                np.asarray(y, dtype="float32"), expected_outputs, rtol=rounding, atol=2.0**-25
            )
        for name, value in statistics.items():
            np.testing.assert_allclose(getattr(layer, name).numpy(), value, rtol=1e-6, err_msg=name)

    check()

    def half_precision_variance(x, gamma, beta, epsilon, *args):
        mean = keras.ops.mean(x, (0, 1, 2))
        variance = keras.ops.cast(keras.ops.var(keras.ops.cast(x, compute_dtype), (0, 1, 2)), "float32")
        outputs = (x - mean) * gamma * keras.ops.rsqrt(variance + epsilon) + beta
        count = keras.ops.cast(keras.ops.size(x) // keras.ops.size(mean), "float32")
        return outputs, mean, variance, count

    for function in ("batch_norm_training", "batch_norm_training_composed"):
        monkeypatch.setattr(f"normzoo.layers._fused.{function}", half_precision_variance)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check()


def test_matches_keras_batch_normalization_where_they_coincide():
    shape = (6, 4, 4, 5)
    x = images(shape)
    ours = built_layer(shape, momentum=0.8)
    theirs = keras.layers.BatchNormalization(momentum=0.8)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())
    for training in (True, False, True):
        np.testing.assert_allclose(
            ours(x, training=training), theirs(x, training=training), atol=1e-5, rtol=1e-5
        )
    for mine, keras_weight in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, keras_weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_output_is_invariant_to_weight_scale_and_gradient_scales_inversely(scale):
    """Article 000: BN(a*W*x) == BN(W*x), and dL/dW at a*W is dL/dW at W over a."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(16, 5)).astype("float32"))
    kernel = rng.normal(size=(5, 4)).astype("float32")
    upstream = tf.constant(rng.normal(size=(16, 4)).astype("float32"))
    def output_and_grad(weight):
        weight = tf.Variable(weight)
        layer = BatchNorm(epsilon=1e-9)
        with tf.GradientTape() as tape:
            y = layer(tf.matmul(x, weight), training=True)
            loss = tf.reduce_sum(y * upstream)
        return y.numpy(), tape.gradient(loss, weight).numpy()

    y_ref, grad_ref = output_and_grad(kernel)
    y_scaled, grad_scaled = output_and_grad(scale * kernel)
    np.testing.assert_allclose(y_scaled, y_ref, atol=1e-4)
    np.testing.assert_allclose(grad_scaled, grad_ref / scale, rtol=1e-3, atol=1e-5 / scale)


def test_conv_output_is_invariant_to_kernel_scale_and_gradient_scales_inversely():
    """Article 000 for a convolution, with per-channel statistics."""
    scale = 7.0
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 6, 6, 2)).astype("float32"))
    kernel = rng.normal(size=(3, 3, 2, 3)).astype("float32")
    upstream = tf.constant(rng.normal(size=(4, 6, 6, 3)).astype("float32"))

    def output_and_grad(weight):
        weight = tf.Variable(weight)
        layer = BatchNorm(epsilon=1e-9)
        with tf.GradientTape() as tape:
            y = layer(tf.nn.conv2d(x, weight, 1, "SAME"), training=True)
            loss = tf.reduce_sum(y * upstream)
        return y.numpy(), tape.gradient(loss, weight).numpy()

    y_ref, grad_ref = output_and_grad(kernel)
    y_scaled, grad_scaled = output_and_grad(scale * kernel)
    np.testing.assert_allclose(y_scaled, y_ref, atol=1e-4)
    np.testing.assert_allclose(grad_scaled, grad_ref / scale, rtol=1e-3, atol=1e-5)


def test_training_output_depends_on_batch_but_layer_norm_does_not():
    """Article 003: BN (training) mixes samples of a batch; LN never does."""
    shape = (6, 4, 4, 3)
    x = images(shape)
    other = x.copy()
    other[1:] = images((5, 4, 4, 3), seed=9)
    bn = built_layer(shape)
    bn_a = np.asarray(bn(x, training=True))[0]
    bn_b = np.asarray(bn(other, training=True))[0]
    assert np.abs(bn_a - bn_b).max() > 0.1
    ln = LayerNorm(axis=(1, 2, 3))
    np.testing.assert_array_equal(np.asarray(ln(x))[0], np.asarray(ln(other))[0])


def _one_sgd_step(model, x, y):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    for variable, grad in zip(model.trainable_variables, grads):
        variable.assign_sub(0.1 * grad)
    return loss


def test_xla_training_step_equals_eager_step():
    keras.utils.set_random_seed(0)
    eager_model = small_conv_model(lambda: BatchNorm(momentum=0.5))
    xla_model = small_conv_model(lambda: BatchNorm(momentum=0.5))
    xla_model.set_weights(eager_model.get_weights())
    x, y = classification_data(n=8)
    compiled_step = tf.function(_one_sgd_step, jit_compile=True)
    for _ in range(2):
        eager_loss = _one_sgd_step(eager_model, x, y)
        xla_loss = compiled_step(xla_model, tf.constant(x), tf.constant(y))
        np.testing.assert_allclose(xla_loss, eager_loss, atol=1e-5, rtol=1e-5)
    # The whole step, convolution and batch statistics included, is one XLA
    # computation (this raises if the function cannot be compiled).
    hlo = compiled_step.experimental_get_compiler_ir(xla_model, tf.constant(x), tf.constant(y))(
        stage="hlo"
    )
    assert "convolution" in hlo and ("rsqrt" in hlo or "batch-norm-training" in hlo)
    for eager_weight, xla_weight in zip(eager_model.get_weights(), xla_model.get_weights()):
        np.testing.assert_allclose(xla_weight, eager_weight, atol=1e-5, rtol=1e-5)


def test_a_model_of_many_layers_trains_eagerly_without_retracing_warnings(caplog):
    """An eager training call runs each layer as one tf.function, traced
    once per layer. TensorFlow counts the traces of all functions of one
    Python function together and warns of "retracing" at five in ten calls:
    a model's fifth BatchNorm would trigger it on the first step, though
    nothing retraces. Each layer still computes the batch-statistics
    formula, from its first call to its last."""
    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    # TensorFlow's detector warns at most twice per process: earlier tests
    # must not have used that up, or the warning could not show here.
    polymorphic_function._frequent_tracing_detector_manager._detectors.pop(
        BatchNorm._train_forward.__code__, None
    )
    logger = logging.getLogger("tensorflow")
    logger.addHandler(caplog.handler)
    stack = [BatchNorm(epsilon=EPSILON, center=False, scale=False) for _ in range(8)]
    try:
        x = images((6, 5))
        for step in range(3):
            outputs = expected = x + step
            for layer in stack:
                outputs = layer(outputs, training=True)
                mean, variance = numpy_batch_moments(expected, axis=-1)
                expected = (expected - mean) / np.sqrt(variance + EPSILON)
            np.testing.assert_allclose(outputs, expected, atol=1e-4)
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]


def training_gradients(layer, d_outputs):
    """x -> gradients of sum(d_outputs * layer(x, training=True)) w.r.t. x,
    gamma and beta."""

    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=True)
        return tape.gradient(outputs, [x, layer.gamma, layer.beta], output_gradients=d_outputs)

    return gradients


@pytest.mark.parametrize(
    "shape, axis", [((6, 4, 4, 3), -1), ((6, 3, 4, 4), 1), ((16, 5), -1), ((4, 3, 2, 2, 3), -1)]
)
def test_xla_gradients_equal_the_batch_norm_formula_for_every_rank(shape, axis):
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    d_outputs = rng.normal(size=shape).astype("float32")
    layer = BatchNorm(axis=axis, epsilon=1e-3)
    layer.build(shape)
    gamma = rng.normal(1.0, 0.5, size=layer.gamma.shape).astype("float32")
    layer.gamma.assign(gamma)

    compiled = tf.function(training_gradients(layer, d_outputs), jit_compile=True)
    got = compiled(tf.constant(x))
    expected = numpy_batch_norm_gradients(x, gamma, d_outputs, 1e-3, axis)
    for name, g, e in zip(("x", "gamma", "beta"), got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-4, err_msg=name)
    # XLA computes the formula itself rather than its batch-norm HLO op, whose
    # CPU expansion is slower.
    hlo = compiled.experimental_get_compiler_ir(tf.constant(x))(stage="hlo")
    assert "batch-norm" not in hlo and "rsqrt" in hlo


@pytest.mark.parametrize("jit_compile", [None, True], ids=["eager", "xla"])
def test_gradients_stay_accurate_when_mean_dwarfs_std(jit_compile):
    """Mean 1e4, std 1e-2 in float32 (one ulp of 1e4 is 1e-3): the gradients
    still follow the float64 textbook formula for the same float32 input, so
    no term of the size of the mean is rounded on the way."""
    rng = np.random.default_rng(5)
    shape = (8, 4, 4, 3)
    x = (1e4 + 1e-2 * rng.normal(size=shape)).astype("float32")
    d_outputs = rng.normal(size=shape).astype("float32")
    layer = BatchNorm(epsilon=1e-12)
    layer.build(shape)
    gamma = rng.normal(1.0, 0.5, size=3).astype("float32")
    layer.gamma.assign(gamma)

    gradients = training_gradients(layer, d_outputs)
    if jit_compile:
        gradients = tf.function(gradients, jit_compile=True)
    got = gradients(tf.constant(x))
    expected = numpy_batch_norm_gradients(x, gamma, d_outputs, 1e-12, -1)
    for name, g, e in zip(("x", "gamma", "beta"), got, expected):
        # relative to the gradient's own scale (|dx| ~ gamma / std ~ 100)
        np.testing.assert_allclose(g.numpy(), e, rtol=0, atol=1e-4 * np.abs(e).max(), err_msg=name)


def test_keras_file_round_trip_reproduces_outputs_in_training_and_inference(tmp_path):
    keras.utils.set_random_seed(0)
    model = small_conv_model(lambda: BatchNorm(momentum=0.7, frozen_stats=False, name="bn"))
    x, y = classification_data(n=8)
    _one_sgd_step(model, x, y)  # non-initial weights and statistics
    model.get_layer("bn").frozen_stats = True
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded.get_layer("bn"), BatchNorm)
    assert loaded.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    assert loaded.get_layer("bn").frozen_stats is True
    for original, restored in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(restored, original)
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
    model.get_layer("bn").frozen_stats = False
    loaded.get_layer("bn").frozen_stats = False
    np.testing.assert_array_equal(loaded(x, training=True), model(x, training=True))
    np.testing.assert_array_equal(
        loaded.get_layer("bn").moving_mean.numpy(), model.get_layer("bn").moving_mean.numpy()
    )


def test_get_config_lists_every_argument_and_rebuilds_the_same_layer():
    layer = BatchNorm(
        axis=1,
        momentum=0.9,
        epsilon=1e-5,
        center=False,
        scale=True,
        synchronized=True,
        frozen_stats=True,
        gamma_initializer="zeros",
        gamma_regularizer="l2",
        beta_constraint="non_neg",
        name="custom",
    )
    config = layer.get_config()
    clone = BatchNorm.from_config(config)
    assert clone.get_config() == config
    for argument in ("axis", "momentum", "epsilon", "center", "scale", "synchronized", "frozen_stats"):
        assert getattr(clone, argument) == getattr(layer, argument)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"axis": (1, 2)}, "axis"), ({"momentum": 1.5}, "momentum"), ({"epsilon": 0.0}, "epsilon")],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        BatchNorm(**kwargs)


def test_axis_out_of_range_names_the_axis_and_rank():
    with pytest.raises(ValueError, match="out of range"):
        BatchNorm(axis=4).build((2, 3, 3, 3))


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(
    "shape",
    [(1, 8, 8, 3), (1, 1, 1, 3), (1, 3)],
    ids=["image", "one_position", "dense"],
)
def test_a_training_batch_of_one_example_follows_the_formula_without_nan(shape, jit_compile):
    """One example: an image is normalized over its positions; with a single
    value per channel (a dense input, or a 1x1 image) the variance is 0, the
    output is beta and the moving variance decays towards 0; nothing is NaN,
    and the gradients are finite."""
    layer = built_layer(shape, momentum=0.9)
    x = np.random.default_rng(1).normal(2.0, 3.0, shape).astype("float32")
    before = variable_values(layer)
    gamma, beta = before[layer.gamma.path], before[layer.beta.path]

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(1.0, y.shape[-1] + 1.0))
        return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

    outputs, gradients = step(tf.constant(x))

    mean, variance = numpy_batch_moments(x, -1)
    np.testing.assert_allclose(
        outputs, numpy_batch_norm(x, mean, variance, gamma, beta, -1), rtol=1e-5, atol=1e-5
    )
    if np.prod(shape[:-1]) == 1:
        np.testing.assert_array_equal(variance, 0.0)
        np.testing.assert_allclose(outputs, np.broadcast_to(beta, shape), atol=1e-6)
    for gradient in gradients:
        assert np.isfinite(gradient.numpy()).all()
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), 0.9 * before[layer.moving_mean.path] + 0.1 * mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(),
        0.9 * before[layer.moving_variance.path] + 0.1 * variance,
        rtol=1e-5,
    )


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize(
    "shape, kwargs, masked",
    [
        ((0, 3, 3, 4), {}, False),
        ((0, 4), {}, False),
        ((0, 5, 4), {}, True),
        ((0, 3, 3, 4), {"renorm": True, "renorm_clipping": {"rmax": 2.0, "dmax": 1.0}}, False),
    ],
    ids=["fused", "composed", "masked", "renorm"],
)
def test_an_empty_batch_trains_with_zero_gradients_and_changes_no_statistic(
    shape, kwargs, masked, jit_compile
):
    """What a replica computes on its empty shard (a global batch smaller
    than the number of replicas): an empty output, zero gradients for gamma
    and beta (0 * NaN would poison the other replicas' sum), and no moving
    statistic moves."""
    layer = built_layer((None, *shape[1:]), **kwargs)
    before = variable_values(layer)
    mask = tf.zeros(shape[:-1], tf.bool) if masked else None

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            outputs = layer(x, training=True, mask=mask)
            loss = tf.reduce_sum(outputs)
        return outputs, tape.gradient(loss, [layer.gamma, layer.beta])

    outputs, gradients = step(tf.zeros(shape))
    assert outputs.shape == shape
    for gradient in gradients:
        np.testing.assert_array_equal(gradient, np.zeros(shape[-1]))
    for path, value in variable_values(layer).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
