"""The tests that tests/jax/ and tests/torch/ share: one body per check,
run under Keras' JAX backend by tests/jax/ and under its PyTorch backend by
tests/torch/, against the NumPy float64 references (tests/references.py),
Keras' own layers and the original models.

- `layers`: normzoo.layers eagerly and compiled, values and gradients
  (tests/jax/test_layers.py, tests/torch/test_layers.py).
- `bn`: the BatchNorm tools, audit, convert, recalibrate, freeze and fold
  (tests/jax/test_bn.py, tests/torch/test_bn.py).
- `models`: the zoo's small models, trained, and the TensorFlow-only
  formats named as such (tests/jax/test_models.py, tests/torch/test_models.py).

What differs between the backends comes from the test file that imports a
test, through fixtures it defines (each shared module's docstring names
them): how a training call is compiled (`jax.jit` of `stateless_call`, or
`torch.compile(fullgraph=True)`), how gradients are taken (`jax.grad`, or
`torch.autograd`), the ids of the eager and compiled variants. A test file
imports a shared module's tests with `from tests.backend_suite.<module>
import *` (each module's `__all__` is its tests, so a test added here runs
on both backends); pytest collects them there, under that file's node ids,
its `pytestmark` (the backend's skip) and its fixtures. The tests that only
one backend has stay in its own file.

No module here is named `test_*.py`, so none is collected by itself: under
TensorFlow (where tests/conftest.py ignores tests/jax and tests/torch)
nothing here runs.
"""

import keras

# A NumPy copy of a tensor or variable on any backend (np.asarray fails for a
# torch tensor that requires grad, and Variable.numpy() for a trainable torch
# variable).
numpy = keras.ops.convert_to_numpy
