"""What every refused restore must show: the error names the problem and
the fix, and the model keeps every variable bit for bit (a failed restore
loses nothing). Shared by the checkpoint tests."""

import contextlib

import numpy as np
import pytest

from normzoo import checkpoints
from normzoo.checkpoints import RestoreError


def values(model):
    """{variable path: a copy of its value} of every variable of `model`."""
    return {variable.path: variable.numpy().copy() for variable in model.weights}


@contextlib.contextmanager
def unchanged(model):
    """Asserts, after the block, that `model` has the same variables with
    the same values, bit for bit, as before it."""
    before = values(model)
    yield
    after = values(model)
    assert after.keys() == before.keys()
    changed = [path for path in before if not np.array_equal(after[path], before[path])]
    assert not changed, f"changed: {changed[:5]}"


def assert_refused_and_unchanged(model, path, *patterns):
    """restore(model, path) raises RestoreError whose message contains every
    pattern, and `model` is unchanged; returns the error."""
    with unchanged(model), pytest.raises(RestoreError) as caught:
        checkpoints.restore(model, path)
    message = str(caught.value)
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in:\n{message}"
    return caught.value
