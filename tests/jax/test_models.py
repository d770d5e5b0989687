"""The model zoo under Keras' JAX backend: `fit(jit_compile=True)` with each
norm, equal to an eager `fit`; `.weights.h5` files that move between
TensorFlow and JAX processes with equal outputs; and the TensorFlow-only
checkpoints, training loop and input pipeline named as such (the small
model and the test shared with PyTorch: tests/backend_suite/models.py)."""

import importlib.util
import textwrap

import keras
import numpy as np
import pytest

from normzoo import backends, checkpoints, naming
from tests.backend_suite.models import LOSS, assert_trained, batch, tiny_model, trained
from tests.backend_suite.models import *  # noqa: F403 - the shared tests, collected here

# A JAX-only install (normzoo[jax]) has no TensorFlow: the tests that need it
# beside JAX (a TensorFlow process, or the TensorFlow-only packages imported
# under JAX) are skipped there, and run in the full test environment.
needs_tensorflow = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="needs TensorFlow installed beside JAX (normzoo[tensorflow])",
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="run with KERAS_BACKEND=jax (tests/test_backends.py)"
)

@pytest.mark.parametrize("norm", naming.NORMS)
def test_fit_with_jit_compile_trains_each_norm_and_equals_eager_fit(norm):
    """Three epochs of `fit(jit_compile=True)` lower the loss and leave the
    weights (moving statistics included) of an eager `fit` on the same data
    (to float32 rounding): XLA changes nothing but speed."""
    compiled, losses = trained(norm, jit_compile=True)
    eager, _ = trained(norm, jit_compile=False)
    assert_trained(norm, compiled, losses)
    for a, b in zip(compiled.variables, eager.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=a.path)


# Run in a TensorFlow-backend process: build the same model, and either
# write its weights and outputs, or load weights and write its outputs.
TENSORFLOW_SIDE = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from normzoo import models

    norm, mode, directory = sys.argv[1:]
    assert keras.backend.backend() == "tensorflow"
    keras.utils.set_random_seed(1)
    model = models.build("wrn_10_1", norm=norm, num_classes=3, input_shape=(8, 8, 3))
    images = np.load(f"{directory}/images.npy")
    if mode == "save":
        model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(images, np.arange(len(images)) % 3, batch_size=8, epochs=1, verbose=0)
        model.save_weights(f"{directory}/tensorflow.weights.h5")
    else:
        model.load_weights(f"{directory}/jax.weights.h5")
    np.save(f"{directory}/tensorflow_inference.npy", model(images, training=False).numpy())
    """
)


@needs_tensorflow
def test_weights_files_move_between_tensorflow_and_jax_with_equal_outputs(tmp_path, run_python):
    norm = "batch"  # the norm with moving statistics, which training moves

    def tensorflow_side(mode):
        run_python("-c", TENSORFLOW_SIDE, norm, mode, str(tmp_path), backend="tensorflow")

    images, _ = batch(seed=3)
    np.save(tmp_path / "images.npy", images)
    # TensorFlow trains one epoch (moving statistics move) and saves.
    tensorflow_side("save")
    model = tiny_model(norm, seed=2)
    model.load_weights(tmp_path / "tensorflow.weights.h5")
    expected = np.load(tmp_path / "tensorflow_inference.npy")
    np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, rtol=1e-4, atol=1e-5)
    # normzoo's all-or-nothing restore reads the same file on JAX.
    restored = tiny_model(norm, seed=3)
    report = checkpoints.restore(restored, tmp_path / "tensorflow.weights.h5")
    assert not report.missing
    np.testing.assert_allclose(np.asarray(restored(images, training=False)), expected, rtol=1e-4, atol=1e-5)
    # And back: JAX trains, saves; TensorFlow loads and gives JAX's outputs.
    model.compile(keras.optimizers.SGD(0.05), LOSS, jit_compile=True)
    model.fit(images, np.arange(len(images)) % 3, batch_size=8, epochs=1, verbose=0)
    model.save_weights(tmp_path / "jax.weights.h5")
    tensorflow_side("load")
    np.testing.assert_allclose(
        np.load(tmp_path / "tensorflow_inference.npy"),
        np.asarray(model(images, training=False)),
        rtol=1e-4,
        atol=1e-5,
    )


@needs_tensorflow
def test_the_tensorflow_training_loop_and_input_pipeline_name_the_tensorflow_backend():
    from normzoo import data, training

    model = tiny_model("batch")
    calls = [
        lambda: training.TrainStep(model, keras.optimizers.SGD(), None, 8, jit_compile=False),
        lambda: training.make_strategy("default"),
        lambda: data.load("digits", "train", global_batch_size=8, training=True),
    ]
    for call in calls:
        with pytest.raises(backends.BackendError, match="TensorFlow backend.*KERAS_BACKEND=tensorflow"):
            call()
