"""normzoo.layers under Keras' PyTorch backend, eagerly and compiled by
`torch.compile(fullgraph=True)`, against the NumPy float64 references the
TensorFlow and JAX tests use (tests/references.py) and Keras' own layers
on PyTorch.

The checks shared with JAX are in tests/backend_suite/layers.py; this file
runs them on PyTorch with its hooks: a training call compiled whole by
`torch.compile`, gradients by `torch.autograd` through the compiled call,
and the ids "eager" and "compiled". Here only: `synchronized=True` is an
error on PyTorch.

`fullgraph=True` fails on any graph break, so the compiled variants also
show that each layer's training call is captured as one graph (what
`Model.fit(jit_compile=True)` compiles on torch). They use the
"aot_eager" backend: Dynamo's capture and AOTAutograd's traced forward and
backward, without Inductor's C++ code generation (seconds per kernel on
these CPUs; tests/torch/test_models.py runs Inductor through `fit`).

Run in a process whose Keras backend is PyTorch (tests/test_backends.py
spawns it): `KERAS_BACKEND=torch python -m pytest tests/torch`.
"""

import types

import keras
import pytest

from normzoo.layers import BatchNorm
from tests.backend_suite.layers import *  # noqa: F403 - the shared tests, collected here

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="run with KERAS_BACKEND=torch (tests/test_backends.py)"
)

if keras.backend.backend() == "torch":
    import torch


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Dynamo keeps compiled code per Python function and guards it on the
    layer it read: the hooks' functions, compiled again for each test's
    layers, would reach its recompile limit (8)."""
    torch._dynamo.reset()


def compiled(function):
    return torch.compile(function, backend="aot_eager", fullgraph=True)


def tensor(value):
    return None if value is None else keras.ops.convert_to_tensor(value)


def training_call(layer, jit):
    """(x, mask=None) -> layer(x, training=True, mask=mask), eagerly or
    compiled whole; the moving statistics are updated either way."""

    def call(x, mask):
        return layer(x, training=True, mask=mask)

    run = compiled(call) if jit else call

    def step(x, mask=None):
        if not layer.built:
            layer.build(x.shape)
        return run(tensor(x), tensor(mask))

    return step


def gradients(layer, x, loss, **kwargs):
    """Gradients of loss(layer(x, **kwargs)) w.r.t. x and each trainable
    variable, by torch.autograd through the compiled call."""
    x = torch.tensor(x, requires_grad=True)
    outputs = compiled(lambda x: layer(x, **kwargs))(x)
    variables = [v.value for v in layer.trainable_variables]
    return [g.detach().numpy() for g in torch.autograd.grad(loss(outputs), [x, *variables])]


@pytest.fixture
def backend():
    """The PyTorch hooks of the shared tests (tests/backend_suite/layers.py)."""
    return types.SimpleNamespace(training_call=training_call, gradients=gradients, compiled=compiled)


@pytest.fixture(params=[False, True], ids=["eager", "compiled"])
def jit(request):
    """Each shared test that takes `jit` runs eagerly and compiled by
    `torch.compile(fullgraph=True)`."""
    return request.param


def test_synchronized_is_a_value_error_naming_the_torch_backend_and_the_fix():
    with pytest.raises(ValueError, match=r"synchronized=True.*'torch'.*synchronized=False"):
        BatchNorm(synchronized=True)
