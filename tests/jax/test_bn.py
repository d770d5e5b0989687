"""normzoo.bn under Keras' JAX backend: audit, convert, freeze (through
`fit(jit_compile=True)`), recalibrate (from a NumPy array and from a
generator) and fold (its `predict` compiled with `jax.jit`), against
Keras' own layer, NumPy statistics over the data and the original model's
outputs.

The tests are shared with PyTorch (tests/backend_suite/bn.py); this file
runs them on JAX."""

import keras
import pytest

from tests.backend_suite.bn import *  # noqa: F403 - the shared tests, collected here

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="run with KERAS_BACKEND=jax (tests/test_backends.py)"
)


@pytest.fixture
def jit_compile():
    """`fit` compiles its step with XLA (`jax.jit`)."""
    return True
