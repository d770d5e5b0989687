"""Damaged, foreign and unsafe checkpoints are refused with the fix, and the
model they were restored into keeps every variable bit for bit.

tests/checkpoints/test_all_or_nothing.py already covers: a missing file, an
HDF5 signature followed by nothing, a text file, an HDF5 file that is not a
Keras file, a classifier of another size, NaN in a statistic (strict and not),
an unexpected tensor, ResNet-18 into ResNet-34, an unreadable TF index and
other sources normzoo does not read. This file adds real files cut short or
with flipped bytes in every format, foreign architectures and normalizations,
a mismatch inside the network, Inf in a training checkpoint and `.keras` files
holding Python bytecode.
"""

import json
import shutil
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo import checkpoints, models
from tests.checkpoints import refusals

SHAPE = (16, 16, 3)


def _model(name="resnet20", norm="batch", **overrides):
    return models.build(name, norm=norm, input_shape=SHAPE, num_classes=5, **overrides)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random ResNet-20 saved in the three formats normzoo writes or reads
    most: .weights.h5, .keras and a training checkpoint (model + optimizer),
    and its values by variable path in values.npz."""
    directory = tmp_path_factory.mktemp("saved")
    model = _model()
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    # What every file holds, for the tests that restore an undamaged one.
    np.savez(directory / "values.npz", **refusals.values(model))
    model.save_weights(directory / "model.weights.h5")
    model.save(directory / "model.keras")
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(directory / "tf" / "ckpt-1"))
    return directory


@pytest.fixture
def target():
    """A model of the same architecture with other values than the files'."""
    return _model()


def _copy(saved, tmp_path, name):
    """A copy of the saved file (or, for "tf", the checkpoint directory) and
    the path to restore from."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if name == "tf":
        shutil.copytree(saved / "tf", tmp_path / "tf")
        return tmp_path / "tf", str(tmp_path / "tf" / "ckpt-1")
    shutil.copy(saved / name, tmp_path / name)
    return tmp_path / name, tmp_path / name


_FILES = {
    "weights_h5": ("model.weights.h5", None),
    "keras": ("model.keras", None),
    "tf_data": ("tf", "ckpt-1.data-00000-of-00001"),
    "tf_index": ("tf", "ckpt-1.index"),
}


def _damage(saved, tmp_path, which, damage):
    copied, restore_path = _copy(saved, tmp_path, _FILES[which][0])
    file = copied / _FILES[which][1] if _FILES[which][1] else copied
    data = bytearray(file.read_bytes())
    file.write_bytes(bytes(damage(data)))
    return restore_path


def test_the_undamaged_files_restore(saved, tmp_path, monkeypatch):
    # The damaged copies below differ from these only by the damage.
    expected = dict(np.load(saved / "values.npz"))

    def assert_restores(which):
        model = _model()
        checkpoints.restore(model, _damage(saved, tmp_path / which, which, lambda data: data))
        values = refusals.values(model)
        assert values.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_array_equal(values[name], value, err_msg=name)

    for which in _FILES:
        assert_restores(which)
    # A restore that assigns nothing fails the check (the freshly built
    # model's values differ from the saved ones).
    monkeypatch.setattr(checkpoints, "restore", lambda model, path, **kwargs: None)
    with pytest.raises(AssertionError, match="not equal"):
        assert_restores("weights_h5")


@pytest.mark.parametrize("which", list(_FILES))
@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_a_file_cut_short_is_refused(saved, target, tmp_path, which, fraction):
    path = _damage(saved, tmp_path, which, lambda data: data[: int(len(data) * fraction)])
    error = refusals.assert_refused_and_unchanged(target, path, str(path))
    assert any(word in str(error) for word in ("truncated", "incomplete", "cut short")), str(error)


@pytest.mark.parametrize(
    "which, offset",
    [
        ("keras", 0.5),  # inside the weights: the zip's CRC-32 fails
        ("keras", 0.02),  # inside config.json
        ("tf_data", 0.5),  # a tensor's CRC32C fails
        ("tf_index", 0.5),
        ("weights_h5", 12),  # the HDF5 superblock
    ],
)
def test_flipped_bytes_are_refused(saved, target, tmp_path, which, offset):
    def flip(data):
        start = offset if isinstance(offset, int) else int(len(data) * offset)
        for index in range(start, start + 8):
            data[index] ^= 0xFF
        return data

    path = _damage(saved, tmp_path, which, flip)
    error = refusals.assert_refused_and_unchanged(target, path, str(path))
    assert any(word in str(error) for word in ("damaged", "corrupt")), str(error)


def test_the_weights_of_a_network_that_is_no_resnet_are_refused(target, tmp_path):
    mlp = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="hidden")])
    path = tmp_path / "mlp.weights.h5"
    mlp.save_weights(path)
    error = refusals.assert_refused_and_unchanged(
        target, path, "missing from the checkpoint", "matching no model variable", "Fix:"
    )
    assert error.report.restored == ()


@pytest.mark.parametrize(
    "source, into, described",
    [
        # CIFAR ResNets of other depths: 3 vs 5 blocks per stage.
        (("resnet20", "batch"), ("resnet32", "batch"), ["3, 3, 3 blocks", "5, 5, 5 blocks"]),
        (("wrn_10_1", "batch"), ("wrn_16_1", "batch"), ["1, 1, 1 blocks", "2, 2, 2 blocks"]),
        # A SkipInit network into a BatchNorm one of the same depth.
        (("resnet20", "skipinit"), ("resnet20", "batch"), ["norm 'skipinit'", "norm 'batch'"]),
    ],
)
def test_a_checkpoint_of_another_architecture_is_described(tmp_path, source, into, described):
    path = tmp_path / "source.weights.h5"
    _model(*source).save_weights(path)
    refusals.assert_refused_and_unchanged(
        _model(*into), path, *described, "normzoo.build(name, weights=path)"
    )


def test_resnet50_into_resnet101_is_refused(tmp_path):
    shape = (32, 32, 3)
    path = tmp_path / "resnet50.weights.h5"
    models.build("resnet50", input_shape=shape, width=2, num_classes=3).save_weights(path)
    target = models.build("resnet101", input_shape=shape, width=2, num_classes=3)
    refusals.assert_refused_and_unchanged(target, path, "3, 4, 6, 3 blocks", "3, 4, 23, 3 blocks")


def test_a_mismatch_inside_the_network_names_each_shape(tmp_path):
    path = tmp_path / "wide.weights.h5"
    _model(width=32).save_weights(path)
    target = _model()
    error = refusals.assert_refused_and_unchanged(target, path, "shape mismatch(es)", "conv1_conv/kernel")
    kernel = next(m for m in error.report.shape_mismatched if m.variable == "conv1_conv/kernel")
    assert kernel.model_shape[-1] != kernel.source_shape[-1]


@pytest.mark.parametrize("strict", [True, False])
def test_inf_in_a_training_checkpoint_is_never_assigned(tmp_path, target, strict):
    source = _model()
    rng = np.random.default_rng(1)
    for variable in source.weights:  # statistics away from their initial values too
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    kernel = source.get_layer("conv1_conv").kernel
    poisoned = kernel.numpy()
    poisoned[0, 0, 0, 0] = np.inf
    kernel.assign(poisoned)
    prefix = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt-1"))
    if strict:
        error = refusals.assert_refused_and_unchanged(
            target, prefix, "NaN or Inf", "conv1_conv/kernel", "restore an earlier checkpoint"
        )
        assert [variable for variable, _ in error.report.non_finite] == ["conv1_conv/kernel"]
    else:
        kept = target.get_layer("conv1_conv").kernel.numpy().copy()
        report = checkpoints.restore(target, prefix, strict=False)
        assert [variable for variable, _ in report.non_finite] == ["conv1_conv/kernel"]
        np.testing.assert_array_equal(target.get_layer("conv1_conv").kernel.numpy(), kept)
        # Every other variable is restored (was: one moving mean compared
        # with a freshly built model's, zeros on both sides).
        expected = refusals.values(source)
        for name, value in refusals.values(target).items():
            if name != "conv1_conv/kernel":
                np.testing.assert_array_equal(value, expected[name], err_msg=name)


def _lambda_model(marker):
    """A ResNet-20 behind a Lambda layer whose Python lambda, when run,
    creates `marker`."""
    marker = str(marker)
    inputs = keras.Input(SHAPE)
    outputs = keras.layers.Lambda(
        lambda x: (open(marker, "w").close(), x)[1], name="preprocess"
    )(inputs)
    network = _model()
    return keras.Model(inputs, network(outputs)), network


def test_a_keras_file_with_python_bytecode_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "lambda_ran"
    wrapper, _ = _lambda_model(marker)
    path = tmp_path / "with_lambda.keras"
    wrapper.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda

    # Keras itself refuses it in safe_mode, and runs it when told to: the
    # marker shows whether the lambda ran.
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(path)
    assert not marker.exists()
    keras.saving.load_model(path, safe_mode=False)
    assert marker.exists()
    marker.unlink()

    target = _model()
    refusals.assert_refused_and_unchanged(
        target, path, "Python bytecode", "preprocess", "safe_mode=False", "save_weights"
    )
    assert not marker.exists()


def test_a_keras_file_with_a_lambda_hidden_in_a_nested_config_is_refused(saved, tmp_path):
    # The bytecode need not be a Lambda layer's own "function": any
    # serialized lambda (here injected in the config) is refused.
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(saved / "model.keras") as source, zipfile.ZipFile(path, "w") as copy:
        for item in source.namelist():
            content = source.read(item)
            if item == "config.json":
                config = json.loads(content)
                config["config"]["layers"][1]["config"]["activity_regularizer"] = {
                    "class_name": "__lambda__",
                    "config": {"code": "ZGF0YQ==", "defaults": None, "closure": None},
                }
                content = json.dumps(config)
            copy.writestr(item, content)
    refusals.assert_refused_and_unchanged(_model(), path, "Python bytecode")
