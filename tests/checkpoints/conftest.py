"""Checkpoints of the real source frameworks, and how restored models are compared.

A source model (keras.applications, TF-slim, a normzoo model) gets random
weights and random BatchNorm statistics away from their initial values,
is saved in its native format and restored into normzoo; the two models'
inference logits on the same images must agree to 1e-4 of the logit scale.
`assert_statistics_matter` then resets one layer's statistics and checks
that the comparison fails: a restore that lost statistics could not pass.
"""

import hashlib
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import types

import h5py
import keras
import numpy as np
import pytest

from normzoo import layers
from normzoo.checkpoints import integrity

IMAGE_SHAPE = (32, 32, 3)
RELATIVE_TOLERANCE = 1e-4


def randomize(model, seed=0):
    """Random weights of the sizes a trained network has: every BatchNorm
    statistic and affine term, bias and SkipInit scalar away from its initial
    value, so that each of them changes the outputs."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        shape = variable.shape
        if name == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("moving_mean", "beta", "bias", "alpha"):
            value = rng.normal(0.0, 0.2, shape)
        else:
            value = variable.numpy()
        variable.assign(np.asarray(value, dtype=variable.dtype))


def images(batch_size=2, shape=IMAGE_SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal((batch_size, *shape)).astype("float32")


def max_relative_difference(outputs, expected):
    return float(np.abs(np.asarray(outputs) - expected).max() / np.abs(expected).max())


def assert_same_outputs(outputs, expected):
    """Max abs difference within 1e-4 of the scale (max abs) of `expected`."""
    assert np.shape(outputs) == np.shape(expected)
    difference = max_relative_difference(outputs, expected)
    assert difference <= RELATIVE_TOLERANCE, (
        f"outputs differ by {difference:.3g} of the logit scale {np.abs(expected).max():.3g}"
    )


def assert_statistics_matter(model, inputs, expected, layer_names):
    """Resetting the moving statistics of any of `layer_names` to their
    initial values (what a restore that lost them leaves) makes the outputs
    differ by far more than the tolerance; the statistics are put back."""
    for name in layer_names:
        layer = model.get_layer(name)
        assert isinstance(layer, layers.BatchNorm), name
        saved = layer.moving_mean.numpy(), layer.moving_variance.numpy()
        layer.moving_mean.assign(np.zeros_like(saved[0]))
        layer.moving_variance.assign(np.ones_like(saved[1]))
        try:
            outputs = model(inputs, training=False).numpy()
        finally:
            layer.moving_mean.assign(saved[0])
            layer.moving_variance.assign(saved[1])
        assert max_relative_difference(outputs, expected) > 10 * RELATIVE_TOLERANCE, name


def save_keras2_h5(model, path):
    """Writes `model`'s weights as Keras 2's `save_weights_to_hdf5_group` did:
    the format of the keras.applications weight files as distributed.

    Root attributes `layer_names` (every layer, in order), `backend`,
    `keras_version`; one group per layer whose `weight_names` attribute lists
    `<layer>/<weight>:0` (trainable weights, then non-trainable ones), each
    the dataset at that path inside the group. Keras 3's legacy loader
    (which keras.applications uses) reads these files.
    """
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [layer.name.encode("utf8") for layer in model.layers]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = file.create_group(layer.name)
            weights = [*layer.trainable_weights, *layer.non_trainable_weights]
            names = [f"{layer.name}/{weight.name}:0" for weight in weights]
            group.attrs["weight_names"] = [name.encode("utf8") for name in names]
            for name, weight in zip(names, weights):
                group.create_dataset(name, data=weight.numpy())


@pytest.fixture
def as_distributed(monkeypatch):
    """as_distributed(path): makes the md5 of the file at `path` the one Keras
    publishes for its name (a keras.applications file name), as if it were
    that file as distributed: tests cannot download the real ones."""

    def record(path):
        name = os.path.basename(path)
        _, url = integrity.DISTRIBUTED_FILES[name]
        md5 = hashlib.md5(pathlib.Path(path).read_bytes()).hexdigest()
        monkeypatch.setitem(integrity.DISTRIBUTED_FILES, name, (md5, url))

    return record


@pytest.fixture(autouse=True)
def _seeded():
    # Kernels keep their initializers' values: the same ones in every run.
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def tools():
    """The helpers above, for the test modules (which cannot import this
    file under pytest's importlib import mode)."""
    return types.SimpleNamespace(
        randomize=randomize,
        images=images,
        max_relative_difference=max_relative_difference,
        assert_same_outputs=assert_same_outputs,
        assert_statistics_matter=assert_statistics_matter,
        save_keras2_h5=save_keras2_h5,
        IMAGE_SHAPE=IMAGE_SHAPE,
    )


class _SlimReference:
    """The subprocess that makes the TF-slim checkpoints (slim_reference.py).

    It takes about half a minute, so it is started as soon as the tests that
    need it are collected, and runs while the other tests do.
    """

    def __init__(self):
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="normzoo_slim_"))
        np.save(self.directory / "images.npy", images())
        script = os.path.join(os.path.dirname(__file__), "slim_reference.py")
        self.process = subprocess.Popen(
            [sys.executable, script, str(self.directory), "resnet_v1_50", "resnet_v2_50"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

    def wait(self):
        _, stderr = self.process.communicate(timeout=600)
        assert self.process.returncode == 0, stderr[-5000:]
        return self.directory

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        shutil.rmtree(self.directory, ignore_errors=True)


_slim_reference = []


def pytest_collection_modifyitems(config, items):
    needed = any("slim_checkpoints" in item.fixturenames for item in items)
    if needed and importlib.util.find_spec("tf_slim") is not None:
        _slim_reference.append(_SlimReference())


def pytest_sessionfinish(session, exitstatus):
    while _slim_reference:
        _slim_reference.pop().close()


@pytest.fixture(scope="session")
def slim_checkpoints():
    """A directory with TF-slim resnet_v1_50 and resnet_v2_50 checkpoints
    (random weights and statistics) made by tf_slim itself, tf_slim's
    logits `<network>_logits.npy` for `images.npy`."""
    if not _slim_reference:
        pytest.fail("tf_slim is missing: install the test extra, pip install -e \".[test]\" (tf_slim, tf_keras).")
    return _slim_reference[0].wait()
