"""The model zoo on Keras' JAX and PyTorch backends: a small Wide-ResNet
per norm, trained by `fit`, and the TensorFlow-only checkpoint format named
as such.

Imported by tests/jax/test_models.py and tests/torch/test_models.py: the
helpers that train and judge the small model (`trained`,
`assert_trained`), and the tests that need nothing of the backend.
"""

import keras
import numpy as np
import pytest

from normzoo import backends, checkpoints, models
from tests.backend_suite import numpy

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tiny_model(norm, seed=0):
    keras.utils.set_random_seed(seed)
    return models.build("wrn_10_1", norm=norm, num_classes=3, input_shape=(8, 8, 3))


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


def trained(norm, jit_compile):
    """(model, losses): `tiny_model(norm)` after three epochs of `fit` on
    `batch()`, compiled with `jit_compile`, and its loss per epoch."""
    model = tiny_model(norm)
    if norm == "skipinit":
        # alpha = 0 cuts the residual branches off the loss; open them so
        # that every variable trains.
        for variable in model.variables:
            if variable.path.endswith("alpha"):
                variable.assign(0.5)
    model.compile(keras.optimizers.SGD(0.05), LOSS, jit_compile=jit_compile)
    images, labels = batch()
    history = model.fit(images, labels, batch_size=8, epochs=3, shuffle=False, verbose=0)
    return model, history.history["loss"]


def assert_trained(norm, model, losses):
    """The loss fell, and the model has moving statistics, moved off zero,
    where its norm is BatchNorm and none otherwise."""
    assert losses[-1] < losses[0], losses
    statistics = [v for v in model.non_trainable_variables if "moving_mean" in v.path]
    assert bool(statistics) == (norm == "batch")
    assert all(np.any(numpy(v) != 0) for v in statistics)


def test_tensorflow_checkpoints_name_the_tensorflow_backend(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    with pytest.raises(backends.BackendError, match="TensorFlow backend.*KERAS_BACKEND=tensorflow"):
        checkpoints.restore(tiny_model("batch"), tmp_path)


# What `from tests.backend_suite.models import *` gives a backend's test file:
# every test above, collected there under its node ids.
__all__ = [name for name in list(globals()) if name.startswith("test_")]
