"""normzoo in an environment without TensorFlow: a subprocess on Keras'
PyTorch backend in which importing `tensorflow` fails, as where it is not
installed."""

import textwrap

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="run with KERAS_BACKEND=torch (tests/test_backends.py)"
)

# Prepended to the script: TensorFlow is not there, as where it is not
# installed: importing it fails and importlib.util.find_spec finds nothing.
# (tests/jax' blocker raises from find_spec, which torch._dynamo, asking
# find_spec about optional modules when Keras imports it, does not take.)
WITHOUT_TENSORFLOW = 'import sys\nsys.modules["tensorflow"] = None\n'


def test_normzoo_its_layers_models_bn_and_checkpoints_run_without_tensorflow(run_python):
    script = """
        import numpy as np
        import keras
        import normzoo
        from normzoo import bn, checkpoints, layers, models

        model = normzoo.build("resnet20", weights="resnet20_batch_digits")
        images = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
        outputs = keras.ops.convert_to_numpy(model(images))
        folded = keras.ops.convert_to_numpy(bn.fold(model)(images))
        print(outputs.shape, np.abs(folded - outputs).max() < 1e-4 * np.abs(outputs).max())
        print(any(m.startswith("tensorflow") and sys.modules[m] is not None for m in sys.modules))
        try:
            normzoo.data
        except normzoo.backends.BackendError as error:
            print("data", 'pip install "normzoo[tensorflow]"' in str(error))
        """
    out = run_python("-c", WITHOUT_TENSORFLOW + textwrap.dedent(script), backend="torch")
    assert out.splitlines() == ["(4, 10) True", "False", "data True"]
