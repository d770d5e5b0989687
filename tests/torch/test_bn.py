"""normzoo.bn under Keras' PyTorch backend: audit, convert, freeze,
recalibrate (from a NumPy array and from a generator) and fold, against
Keras' own layer, NumPy statistics over the data and the original model's
outputs (tests shared with JAX: tests/backend_suite/bn.py); and, here only,
the copies that convert and fold return share no storage with their
original."""

import keras
import pytest

from normzoo import bn
from tests.backend_suite.bn import with_statistics
from tests.backend_suite.bn import *  # noqa: F403 - the shared tests, collected here

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="run with KERAS_BACKEND=torch (tests/test_backends.py)"
)


@pytest.fixture
def jit_compile():
    """`fit` runs eagerly (Keras' "auto" on PyTorch): compiling a ResNet's
    step with Inductor takes minutes on these CPUs (tests/torch/
    test_models.py compiles a small model through `fit`)."""
    return "auto"


@pytest.mark.parametrize("copier", ["convert", "fold"])
def test_a_copy_shares_no_storage_with_its_original(copier):
    """Each torch tensor of the copy's variables is its own memory (no
    shared data pointer), so an in-place update of one cannot reach the
    other (tests/test_bn_copies.py trains them)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    original = with_statistics(keras.Model(inputs, keras.layers.Dense(2)(x)))
    copy = getattr(bn, copier)(original)

    def pointers(model):
        return {variable.value.data_ptr(): variable.path for variable in model.variables}

    assert len(pointers(copy)) == len(copy.variables)
    shared = pointers(copy).keys() & pointers(original).keys()
    assert not shared, [pointers(copy)[p] for p in shared]
