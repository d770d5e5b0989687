"""The model zoo under Keras' PyTorch backend: every family with every
norm, `fit` with each norm (eagerly, and compiled by `torch.compile` with
`jit_compile=True`), `.weights.h5` and `.keras` files that move between
TensorFlow, JAX and PyTorch processes with equal outputs, and restoring
the formats that need no TensorFlow (Keras files, torchvision state dicts,
shipped checkpoints by name); and the TensorFlow-only checkpoints named
as such (the small model and that test are shared with JAX:
tests/backend_suite/models.py)."""

import importlib.util
import textwrap

import keras
import numpy as np
import pytest

import normzoo
from normzoo import checkpoints, layers, models, naming
from tests.backend_suite import numpy
from tests.backend_suite.models import LOSS, assert_trained, batch, tiny_model, trained
from tests.backend_suite.models import *  # noqa: F403 - the shared tests, collected here

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="run with KERAS_BACKEND=torch (tests/test_backends.py)"
)

needs = {
    name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"needs {name} installed beside torch")
    for name in ("tensorflow", "jax", "torchvision")
}


def small(name):
    """The overrides that make `name` small: width 4 where its family
    takes a width (every ResNet); the Wide-ResNets as they are."""
    return {} if name.startswith("wrn_") else {"width": 4}


# Every model of the registry, each with one norm in turn, and one model per
# block layout (CIFAR ResNet, v1 basic with the deep stem, v1 bottleneck, v2
# pre-activation, Wide-ResNet) with every norm: every model and every norm,
# in 41 builds rather than the 100 of every pair (minutes more on 2 cores).
# ResNet-1202 gets BatchNorm: without normalization its 600 blocks overflow
# float32 (the residual stream's variance doubles with each block), on
# every backend.
LAYOUTS = ("resnet20", "resnet18d", "resnet50", "resnet50v2", "wrn_10_1")
_DEEPEST = "resnet1202"
BUILDS = sorted(
    {(name, naming.NORMS[i % len(naming.NORMS)])
     for i, name in enumerate(n for n in models.names() if n != _DEEPEST)}
    | {(_DEEPEST, "batch")}
    | {(name, norm) for name in LAYOUTS for norm in naming.NORMS}
)


@pytest.mark.parametrize("name, norm", BUILDS)
def test_every_model_builds_and_runs_and_every_norm_in_every_layout(name, norm):
    model = models.build(name, norm=norm, num_classes=3, input_shape=(16, 16, 3), **small(name))
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    for training in (True, False):
        outputs = numpy(model(images, training=training))
        assert outputs.shape == (2, 3) and np.isfinite(outputs).all()
    kinds = {type(layer) for layer in model.layers}
    expected = {"batch": layers.BatchNorm, "layer": layers.LayerNorm, "skipinit": layers.SkipInit}.get(norm)
    assert expected is None or expected in kinds
    assert not kinds & {layers.BatchNorm, layers.LayerNorm, layers.SkipInit} - {expected}


@pytest.mark.parametrize("norm", naming.NORMS)
def test_fit_trains_each_norm(norm):
    model, losses = trained(norm, jit_compile=False)
    assert_trained(norm, model, losses)


def every_norm_model():
    """Conv -> BatchNorm -> ReLU -> Conv -> LayerNorm -> SkipInit, added to
    the first block's output -> pooling -> Dense: each of our layers in one
    small model, so that one compilation (tens of seconds with Inductor on
    these CPUs) serves them all."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.ReLU()(layers.BatchNorm(momentum=0.5)(keras.layers.Conv2D(4, 3, padding="same")(inputs)))
    branch = layers.LayerNorm(axis=(1, 2, 3), param_axis=-1)(keras.layers.Conv2D(4, 3, padding="same")(x))
    skip = layers.SkipInit()
    x = keras.layers.Add()([x, skip(branch)])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    skip.alpha.assign(0.5)
    return model


def test_fit_with_jit_compile_is_torch_compile_and_equals_eager_fit():
    """`fit(jit_compile=True)` on torch runs Keras' step through
    `torch.compile` (Inductor): the same weights and moving statistics as
    an eager `fit` (to float32 rounding), for each of our layers."""
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(16, 6, 6, 3)).astype("float32"), rng.integers(0, 2, 16)
    results = []
    for jit_compile in (True, False):
        model = every_norm_model()
        initial = [numpy(v).copy() for v in model.variables]
        model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=jit_compile)
        model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert getattr(model.train_function, "_torchdynamo_orig_callable", None) is not None or not jit_compile
        results.append((model, initial))
    (compiled, initial), (eager, _) = results
    for a, b, before in zip(compiled.variables, eager.variables, initial):
        assert not np.array_equal(numpy(a), before), f"{a.path} did not train"
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-4, atol=1e-5, err_msg=a.path)


# Run in a TensorFlow or JAX process: loads the torch files, writes its
# outputs for them; trains its own model one epoch and saves it in both
# formats with its outputs.
OTHER_SIDE = textwrap.dedent(
    """
    import sys

    # As in tests/conftest.py: torch, installed beside TensorFlow, is
    # imported while this process reads the torch-written files (a
    # segfault without this line), and importing triton after TensorFlow
    # segfaults.
    sys.modules.setdefault("triton", None)
    import keras
    import numpy as np
    from normzoo import models

    backend, directory = sys.argv[1:]
    assert keras.backend.backend() == backend
    images = np.load(f"{directory}/images.npy")

    def model():
        keras.utils.set_random_seed(1)
        return models.build("wrn_10_1", norm="batch", num_classes=3, input_shape=(8, 8, 3))

    def outputs(model):
        return keras.ops.convert_to_numpy(model(images, training=False))

    read = model()
    read.load_weights(f"{directory}/torch.weights.h5")
    np.save(f"{directory}/{backend}_read_torch.weights.npy", outputs(read))
    np.save(f"{directory}/{backend}_read_torch.keras.npy", outputs(keras.models.load_model(f"{directory}/torch.keras")))
    own = model()
    own.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    own.fit(images, np.arange(len(images)) % 3, batch_size=8, epochs=1, verbose=0)
    own.save_weights(f"{directory}/{backend}.weights.h5")
    own.save(f"{directory}/{backend}.keras")
    np.save(f"{directory}/{backend}.npy", outputs(own))
    """
)


@needs["tensorflow"]
@needs["jax"]
def test_weights_and_keras_files_move_between_torch_tensorflow_and_jax_with_equal_outputs(tmp_path, run_python):
    """The norm with moving statistics, which training moves: torch trains
    and saves, TensorFlow and JAX read it and save their own, which torch
    reads, always with the writer's outputs."""
    images, labels = batch(seed=3)
    np.save(tmp_path / "images.npy", images)
    model = tiny_model("batch", seed=2)
    model.compile(keras.optimizers.SGD(0.05), LOSS)
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    model.save_weights(tmp_path / "torch.weights.h5")
    model.save(tmp_path / "torch.keras")
    expected = numpy(model(images, training=False))
    for backend in ("tensorflow", "jax"):
        run_python("-c", OTHER_SIDE, backend, str(tmp_path), backend=backend)
        for kind in ("weights", "keras"):
            np.testing.assert_allclose(
                np.load(tmp_path / f"{backend}_read_torch.{kind}.npy"), expected, rtol=1e-4, atol=1e-5,
                err_msg=f"{backend} reading torch's .{kind}",
            )
        theirs = np.load(tmp_path / f"{backend}.npy")
        assert not np.allclose(theirs, expected)  # their own training moved the weights
        read = tiny_model("batch", seed=4)
        read.load_weights(tmp_path / f"{backend}.weights.h5")
        loaded = keras.models.load_model(tmp_path / f"{backend}.keras")
        # normzoo's all-or-nothing restore reads both formats on torch.
        restored = tiny_model("batch", seed=5)
        assert not checkpoints.restore(restored, tmp_path / f"{backend}.keras").missing
        for who, got in (("load_weights", read), ("load_model", loaded), ("restore", restored)):
            np.testing.assert_allclose(
                numpy(got(images, training=False)), theirs, rtol=1e-4, atol=1e-5, err_msg=f"{who} of {backend}'s file"
            )


@needs["torchvision"]
def test_a_torchvision_state_dict_restores_and_computes_torchvisions_logits(tmp_path, torch_reference):
    import safetensors.torch
    import torch
    import torchvision

    torch.manual_seed(0)
    reference = torch_reference.randomized(torchvision.models.resnet18(num_classes=5))
    images = np.random.default_rng(0).normal(size=(2, 40, 40, 3)).astype("float32")
    expected = torch_reference.logits(reference, images)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    safetensors.torch.save_file(reference.state_dict(), tmp_path / "resnet18.safetensors")
    for file in ("resnet18.pth", "resnet18.safetensors"):
        model = normzoo.build("resnet18", weights=tmp_path / file, input_shape=(40, 40, 3))
        assert model.restore_report.preprocess_mode == "torch"
        got = numpy(model(images, training=False))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max(), err_msg=file)


def test_a_shipped_checkpoint_restores_by_name_as_keras_load_weights_reads_it():
    entry = checkpoints.shipped()[0]
    model = normzoo.build(entry["model"], weights=entry["name"])
    assert model.restore_report.verified
    reference = models.build(entry["model"], norm=entry["norm"], num_classes=10, input_shape=model.input_shape[1:])
    reference.load_weights(model.restore_report.source)  # Keras' own reader
    for variable, expected in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(numpy(variable), numpy(expected), err_msg=variable.path)
    images = np.random.default_rng(0).uniform(-1, 1, (2, *model.input_shape[1:])).astype("float32")
    np.testing.assert_array_equal(numpy(model(images)), numpy(reference(images)))
