"""normzoo.layers under Keras' JAX backend, eagerly and under `jax.jit`,
against the NumPy float64 references the TensorFlow tests use
(tests/references.py) and Keras' own layers on JAX.

The checks shared with PyTorch are in tests/backend_suite/layers.py; this
file runs them on JAX with its hooks: a training call compiled by
`jax.jit` of `layer.stateless_call` (what `Model.fit` compiles), gradients
by `jax.grad` under `jax.jit`, and the ids "eager" and "jit". Here only:
`fit(jit_compile=True)` against Keras' BatchNormalization.

Run in a process whose Keras backend is JAX (tests/test_backends.py spawns
it): `KERAS_BACKEND=jax python -m pytest tests/jax`.
"""

import types

import jax
import keras
import numpy as np
import pytest

from normzoo.layers import BatchNorm
from tests.backend_suite.layers import images
from tests.backend_suite.layers import *  # noqa: F403 - the shared tests, collected here

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="run with KERAS_BACKEND=jax (tests/test_backends.py)"
)


def training_call(layer, jit):
    """(x, mask=None) -> layer(x, training=True, mask=mask), eagerly or
    through `jax.jit` of `stateless_call` (what `Model.fit` compiles); the
    moving statistics are updated either way."""
    if not jit:
        return lambda x, mask=None: layer(x, training=True, mask=mask)

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
        return outputs

    return run


def gradients(layer, x, loss, **kwargs):
    """Gradients of loss(layer(x, **kwargs)) w.r.t. x and each trainable
    variable, by `jax.grad` of `stateless_call` under `jax.jit`."""

    def objective(x, trainable):
        non_trainable = [v.value for v in layer.non_trainable_variables]
        outputs, _ = layer.stateless_call(trainable, non_trainable, x, **kwargs)
        return loss(outputs)

    d_x, d_trainable = jax.jit(jax.grad(objective, argnums=(0, 1)))(
        x, [v.value for v in layer.trainable_variables]
    )
    return [np.asarray(g) for g in (d_x, *d_trainable)]


@pytest.fixture
def backend():
    """The JAX hooks of the shared tests (tests/backend_suite/layers.py)."""
    return types.SimpleNamespace(training_call=training_call, gradients=gradients, compiled=jax.jit)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def jit(request):
    """Each shared test that takes `jit` runs eagerly and under `jax.jit`."""
    return request.param


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
