"""BatchNorm and the model zoo under `keras.distribution.DataParallel` on
JAX, over the two CPU devices tests/conftest.py configures
(`--xla_force_host_platform_device_count=2`), against one device given the
concatenated batch.

A jit-compiled data-parallel step is one program over the global batch,
sharded on the batch axis: a BatchNorm's moments are the global batch's
(XLA's SPMD partitioner inserts the all-reduces), with `synchronized=True`
and with `synchronized=False` alike (normzoo's decision, documented in the
layer). The two halves of each batch here come from different
distributions, so per-device statistics (TensorFlow MirroredStrategy's
unsynchronized ones) would differ from the global ones by far more than
the tolerances: the test below checks that too.
"""

import jax
import keras
import numpy as np
import pytest

from normzoo import layers, models
from tests import references

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="run with KERAS_BACKEND=jax (tests/test_backends.py)"
)

EPSILON = 1e-3
MOMENTUM = 0.5
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def data_parallel():
    devices = jax.devices()
    assert len(devices) == 2, f"tests/conftest.py gives JAX 2 CPU devices; got {devices}"
    return keras.distribution.DataParallel(devices=devices)


def two_halves(shape, seed=0):
    """A global batch whose two device shards differ: N(0, 1) and N(6, 3)."""
    rng = np.random.default_rng(seed)
    half = (shape[0] // 2, *shape[1:])
    return np.concatenate([rng.normal(0.0, 1.0, half), rng.normal(6.0, 3.0, half)]).astype("float32")


def normalize_model(synchronized):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3, 3, 5))
    outputs = layers.BatchNorm(momentum=MOMENTUM, epsilon=EPSILON, synchronized=synchronized)(inputs)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    norm = model.layers[-1]
    norm.gamma.assign(rng.uniform(0.5, 2.0, 5).astype("float32"))
    norm.beta.assign(rng.normal(size=5).astype("float32"))
    return model


def training_step(model):
    """(trainable, non_trainable, x, weights) -> (loss, (outputs, new
    non_trainable)), with the gradient of the weighted sum of the outputs
    with respect to the trainable variables and x, under jax.jit."""

    def loss(trainable, non_trainable, x, weights):
        outputs, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return (outputs * weights).sum(), (outputs, non_trainable)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))


def run_step(model, x, weights, put=lambda value: value):
    step = training_step(model)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    (_, (outputs, statistics)), (d_trainable, d_x) = step(trainable, non_trainable, put(x), put(weights))
    return outputs, statistics, d_trainable, d_x, step.lower(trainable, non_trainable, put(x), put(weights))


@pytest.mark.parametrize("synchronized", [True, False])
def test_batch_norm_under_data_parallel_equals_one_device_on_the_whole_batch(data_parallel, synchronized):
    x = two_halves((8, 3, 3, 5))
    weights = np.random.default_rng(3).normal(size=x.shape).astype("float32")

    single = normalize_model(synchronized)
    expected = run_step(single, x, weights)

    with data_parallel.scope():
        parallel = normalize_model(synchronized)

    def shard(value):
        return jax.device_put(value, data_parallel.get_data_layout(value.shape).backend_layout)

    outputs, statistics, d_trainable, d_x, lowered = run_step(parallel, x, weights, shard)
    # The step really ran on two shards, and talked between them.
    assert len(shard(x).sharding.device_set) == 2
    assert outputs.sharding.spec[0] == "batch" and len(outputs.sharding.device_set) == 2
    assert "all-reduce" in lowered.compile().as_text()

    names = ["outputs", "moving_mean", "moving_variance", "d_gamma", "d_beta", "d_x"]
    ours = [outputs, *statistics, *d_trainable, d_x]
    theirs = [expected[0], *expected[1], *expected[2], expected[3]]
    for name, a, b in zip(names, ours, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6, err_msg=name)

    # Both equal the global batch's statistics (the NumPy float64 formula),
    # which are far from either device's own.
    norm = single.layers[-1]
    mean, variance = references.batch_moments(x, -1)
    gamma, beta = (np.asarray(v) for v in (norm.gamma, norm.beta))
    np.testing.assert_allclose(
        np.asarray(outputs), references.batch_norm(x, mean, variance, gamma, beta, -1, EPSILON),
        rtol=1e-4, atol=1e-4,
    )
    gradients = references.batch_norm_gradients(x, gamma, weights, EPSILON, -1)
    for name, a, b in zip(["d_x", "d_gamma", "d_beta"], [d_x, *d_trainable], gradients):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-4, err_msg=name)
    moving_mean, moving_variance = (np.asarray(s) for s in statistics)
    np.testing.assert_allclose(moving_mean, (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moving_variance, MOMENTUM + (1 - MOMENTUM) * variance, rtol=1e-5)
    for half in (x[:4], x[4:]):
        own_mean, _ = references.batch_moments(half, -1)
        assert np.abs((1 - MOMENTUM) * own_mean - moving_mean).max() > 1.0


def tiny_model(norm, synchronized):
    keras.utils.set_random_seed(0)
    extra = {"synchronized_bn": synchronized} if norm == "batch" else {}
    model = models.build("wrn_10_1", norm=norm, num_classes=3, input_shape=(8, 8, 3), **extra)
    if norm == "skipinit":
        # alpha = 0 cuts the residual branches off the loss; open them.
        for variable in model.variables:
            if variable.path.endswith("alpha"):
                variable.assign(0.5)
    return model


def fitted(model):
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.normal(0, 1, (8, 8, 8, 3)), rng.normal(2, 3, (8, 8, 8, 3))])
    labels = rng.integers(0, 3, 16)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), LOSS, jit_compile=True)
    history = model.fit(images.astype("float32"), labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return history.history["loss"]


# BatchNorm both ways, and LayerNorm (per-example statistics: nothing to
# share between devices) as the control.
@pytest.mark.parametrize("norm, synchronized", [("batch", True), ("batch", False), ("layer", False)])
def test_fit_under_data_parallel_matches_a_single_device_run(data_parallel, norm, synchronized):
    """Two epochs of `fit` on the same global batches of 8 (4 per device):
    the same losses and the same variables, moving statistics included."""
    single = tiny_model(norm, synchronized)
    single_losses = fitted(single)
    with data_parallel.scope():
        parallel = tiny_model(norm, synchronized)
        parallel_losses = fitted(parallel)
    assert len(parallel.variables[0].value.sharding.device_set) == 2
    np.testing.assert_allclose(parallel_losses, single_losses, rtol=1e-5)
    for a, b in zip(parallel.variables, single.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=a.path)
    statistics = [v for v in parallel.non_trainable_variables if "moving_mean" in v.path]
    assert bool(statistics) == (norm == "batch")


def test_synchronized_without_a_distribution_is_ordinary_batch_norm():
    """Keras refuses `synchronized=True` on JAX; normzoo accepts it, keeps
    it in the config, and on one device it computes what False does."""
    x = two_halves((8, 3, 3, 5))
    weights = np.ones_like(x)
    synchronized, plain = (run_step(normalize_model(s), x, weights) for s in (True, False))
    for a, b in zip(jax.tree.leaves(synchronized[:4]), jax.tree.leaves(plain[:4])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    layer = layers.BatchNorm(synchronized=True)
    assert layers.BatchNorm.from_config(layer.get_config()).synchronized is True
