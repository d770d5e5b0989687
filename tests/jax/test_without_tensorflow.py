"""normzoo in an environment without TensorFlow: a subprocess on Keras' JAX
backend in which importing `tensorflow` fails, as where it is not
installed."""

import textwrap

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="run with KERAS_BACKEND=jax (tests/test_backends.py)"
)

# Prepended to each script: any import of tensorflow raises ImportError.
WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import sys

    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)

    sys.meta_path.insert(0, NoTensorFlow())
    """
)


@pytest.fixture
def run_without_tensorflow(run_python):
    """run_without_tensorflow(script): runs `script` in a JAX-backend process
    in which TensorFlow cannot be imported; returns its stdout."""
    return lambda script: run_python("-c", WITHOUT_TENSORFLOW + textwrap.dedent(script), backend="jax")


def test_the_blocker_blocks(run_without_tensorflow):
    out = run_without_tensorflow(
        """
        try:
            import tensorflow
        except ImportError:
            print("blocked")
        """
    )
    assert out.split() == ["blocked"]


def test_normzoo_its_layers_models_bn_and_checkpoints_import_and_run_without_tensorflow(
    run_without_tensorflow,
):
    out = run_without_tensorflow(
        """
        import numpy as np
        import normzoo
        from normzoo import bn, checkpoints, layers, models

        model = normzoo.models.build("resnet20", norm="batch", num_classes=10)
        images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
        normzoo.bn.recalibrate(model, images, batch_size=4)
        outputs = np.asarray(model(images))
        # The folded copy computes the same function (bn.fold's promise).
        folded = np.asarray(normzoo.bn.fold(model)(images))
        print(outputs.shape, np.abs(folded - outputs).max() < 1e-4 * np.abs(outputs).max())
        print(any(m.startswith("tensorflow") for m in sys.modules))
        # The TensorFlow-only packages fail with normzoo's error, naming
        # what to install, not with an ImportError of tensorflow.
        for name in ("data", "training"):
            try:
                __import__(f"normzoo.{name}")
            except normzoo.backends.BackendError as error:
                print(name, 'pip install "normzoo[tensorflow]"' in str(error))
        try:
            normzoo.data
        except normzoo.backends.BackendError:
            print("normzoo.data BackendError")
        # A command ends with one line naming the extra to install.
        from normzoo.commands import train
        sys.argv = ["normzoo-train"]
        try:
            train.main()
        except SystemExit as exit:
            print("exit", exit.code)
        """
    )
    assert out.splitlines() == [
        "(8, 10) True", "False", "data True", "training True", "normzoo.data BackendError", "exit 1"
    ]
