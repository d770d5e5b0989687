"""Weight files carry a checksum per tensor, and restore verifies every one.

The damage is real: bytes are XOR-ed inside a tensor's data, found through
HDF5's own record of where each dataset's bytes lie
(`dataset.id.get_offset()`), and Keras' `load_weights` is shown to load the
damaged file without complaint. Restored values are compared with the
saved model's, bit for bit; "unchanged" with the target's own values.
Published hashes come from Keras' source (keras/src/applications/resnet.py)
and from hashlib over the files.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import normzoo
from normzoo import checkpoints, models
from normzoo.checkpoints import RestoreError, integrity
from tests.checkpoints import refusals

SHAPE = (16, 16, 3)
ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "checkpoints"


def _model(seed):
    model = models.build("resnet20", input_shape=SHAPE, num_classes=5)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    return model


def _datasets(path):
    """{dataset path: its values} of every dataset in an HDF5 file."""
    values = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, node: values.__setitem__(name, node[()])
            if isinstance(node, h5py.Dataset)
            else None
        )
    return values


def _dataset_of(path, model, variable_path):
    """The dataset holding `variable_path` ("conv1_bn/moving_variance"),
    found as Keras lays the file out: the `vars` group whose `name` is the
    layer's, at the variable's position among the layer's variables
    (trainable ones, then the others)."""
    layer_name, _ = variable_path.rsplit("/", 1)
    layer = model.get_layer(layer_name)
    order = [v.path for v in (*layer.trainable_weights, *layer.non_trainable_weights)]
    position = order.index(variable_path)
    with h5py.File(path, "r") as file:
        for group in file["layers"].values():
            if "vars" in group and group["vars"].attrs.get("name") == layer_name:
                return group["vars"][str(position)].name
    raise AssertionError(f"{variable_path} not in {path}")


def _xor(path, model, variable_path, length=4096):
    """XORs up to `length` bytes in the middle of the data of `model`'s
    variable in the file (all of it, for a smaller tensor); returns its
    dataset's name."""
    name = _dataset_of(path, model, variable_path)
    with h5py.File(path, "r") as file:
        dataset = file[name]
        offset, size = dataset.id.get_offset(), dataset.id.get_storage_size()
    length = min(length, size)
    start = offset + (size - length) // 2
    with open(path, "r+b") as file:
        file.seek(start)
        data = bytearray(file.read(length))
        file.seek(start)
        file.write(bytes(byte ^ 0x5A for byte in data))
    return name


@pytest.fixture(scope="module")
def source():
    """A ResNet-20 with random values, and {variable path: its value}."""
    model = _model(seed=0)
    return model, refusals.values(model)


@pytest.fixture
def saved(source, tmp_path):
    """The source model written by save_weights."""
    path = tmp_path / "model.weights.h5"
    checkpoints.save_weights(source[0], path)
    return path


@pytest.fixture
def target():
    return _model(seed=1)


@pytest.mark.parametrize(
    "variable", ["conv3_block1_1_conv/kernel", "conv1_bn/moving_variance", "predictions/bias"]
)
def test_damaged_tensor_bytes_are_refused_naming_the_variable(variable, source, saved, target):
    model, values = source
    dataset = _xor(saved, model, variable)
    # The damage is inside the tensor, and Keras loads it without a word.
    plain = _model(seed=2)
    plain.load_weights(saved)
    loaded = refusals.values(plain)
    assert not np.array_equal(loaded[variable], values[variable])
    assert all(np.array_equal(loaded[name], values[name]) for name in values if name != variable)

    message = str(refusals.assert_refused_and_unchanged(
        target, saved, str(saved), f"{variable} ({dataset})", "Fix:"
    ))
    assert message.count("(/layers/") == 1, message


def test_damage_in_several_tensors_names_each(source, saved, target):
    variables = ["conv1_conv/kernel", "conv2_block2_2_bn/gamma", "conv4_block3_2_bn/moving_mean"]
    datasets = [_xor(saved, source[0], variable) for variable in variables]
    message = str(refusals.assert_refused_and_unchanged(target, saved, "3 tensor(s)"))
    for variable, dataset in zip(variables, datasets):
        assert f"{variable} ({dataset})" in message


def test_an_intact_file_restores_every_saved_value_verified(source, saved, target):
    report = checkpoints.restore(target, saved)

    assert report.verified and report.complete
    tensors = len(_datasets(saved))
    assert tensors == len(target.weights)
    assert f"verified: the sha256 of each of its {tensors} tensors" in str(report)
    restored = refusals.values(target)
    for name, value in source[1].items():
        np.testing.assert_array_equal(restored[name], value, name)


def test_every_tensor_carries_the_sha256_of_its_bytes(source, saved):
    with h5py.File(saved, "r") as file:
        assert file.attrs["normzoo_checksums"] == "sha256"
        datasets = []
        file.visititems(
            lambda _, node: datasets.append(node) if isinstance(node, h5py.Dataset) else None
        )
        for dataset in datasets:
            expected = hashlib.sha256(np.ascontiguousarray(dataset[()]).tobytes()).hexdigest()
            assert dataset.attrs["normzoo_sha256"] == expected, dataset.name
            variable = dataset.attrs["normzoo_variable"]
            assert dataset.name == _dataset_of(saved, source[0], variable)


def test_plain_keras_reads_our_files_and_they_hold_what_keras_writes(source, saved, tmp_path):
    model, values = source
    fresh = _model(seed=2)
    fresh.load_weights(saved)
    loaded = refusals.values(fresh)
    for name, value in values.items():
        np.testing.assert_array_equal(loaded[name], value, name)
    model.save_weights(tmp_path / "keras.weights.h5")
    ours, keras_own = _datasets(saved), _datasets(tmp_path / "keras.weights.h5")
    assert ours.keys() == keras_own.keys()
    for name in ours:
        assert ours[name].dtype == keras_own[name].dtype, name
        np.testing.assert_array_equal(ours[name], keras_own[name], name)


def test_a_file_written_by_keras_restores_not_verified(source, tmp_path, target):
    model, values = source
    path = tmp_path / "keras.weights.h5"
    model.save_weights(path)

    report = checkpoints.restore(target, path)

    assert not report.verified and report.complete
    assert "not verified: its weights carry no checksums" in str(report)
    restored = refusals.values(target)
    assert all(np.array_equal(restored[name], value) for name, value in values.items())


def test_bfloat16_tensors_are_checked_in_their_stored_bytes(tmp_path):
    def dense():
        return keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(4, dtype="bfloat16", name="dense")]
        )

    source, target = dense(), dense()
    path = tmp_path / "bfloat16.weights.h5"
    checkpoints.save_weights(source, path)
    assert not np.array_equal(target.weights[0].numpy(), source.weights[0].numpy())
    assert checkpoints.restore(target, path).verified
    for restored, saved_variable in zip(target.weights, source.weights):
        assert str(restored.dtype) == "bfloat16"
        np.testing.assert_array_equal(restored.numpy(), saved_variable.numpy())
    with h5py.File(path, "r+") as file:  # one bit of the kernel's bytes
        raw = file["layers/dense/vars/0"][()]
        raw.view(np.uint8)[0] ^= 1
        file["layers/dense/vars/0"][...] = raw
    with pytest.raises(RestoreError, match=r"dense/kernel \(/layers/dense/vars/0\)"):
        checkpoints.restore(target, path)


def test_save_weights_refuses_another_suffix_and_keeps_the_previous_file(
    source, saved, monkeypatch
):
    with pytest.raises(ValueError, match=r"(?s)end in \.weights\.h5.*Fix:.*model\.weights\.h5"):
        checkpoints.save_weights(source[0], saved.with_name("model.h5"))
    assert not saved.with_name("model.h5").exists()

    before = saved.read_bytes()

    def interrupted(path, model):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.keras_files, "_add_checksums", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_weights(_model(seed=3), saved)
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


# keras.applications' files as distributed, and Keras' published hashes
# for them (keras/src/applications/resnet.py, WEIGHTS_HASHES).
KERAS_MD5 = {
    "resnet50_weights_tf_dim_ordering_tf_kernels.h5": "2cb95161c43110f7111970584f804107",
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "ed17cf2e0169df9d443503ef94b23b33",
}


@pytest.mark.parametrize("name", sorted(KERAS_MD5))
def test_the_distributed_names_expect_the_md5_keras_publishes(name):
    md5, url = integrity.DISTRIBUTED_FILES[name]
    assert md5 == KERAS_MD5[name]
    assert url == f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{name}"


@pytest.fixture
def keras2_file(source, tools, tmp_path):
    """keras2_file(name): the source model in Keras 2's HDF5 format (that of
    the keras.applications files) under file name `name`."""

    def make(name):
        path = tmp_path / name
        tools.save_keras2_h5(source[0], path)
        return path

    return make


def test_a_distributed_name_with_another_md5_is_refused_with_the_download(keras2_file, target):
    name = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    path = keras2_file(name)
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    refusals.assert_refused_and_unchanged(
        target, path, str(path), actual, KERAS_MD5[name], "Fix: download it again from",
        f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{name}",
    )


def test_a_distributed_name_with_the_published_md5_restores_verified(
    source, keras2_file, target, as_distributed
):
    path = keras2_file("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    as_distributed(path)

    report = checkpoints.restore(target, path)

    assert report.verified and report.format == "keras_legacy_h5"
    assert "md5 is the one Keras publishes" in str(report)
    restored = refusals.values(target)
    assert all(np.array_equal(restored[name], value) for name, value in source[1].items())


def test_a_renamed_keras_applications_file_restores_not_verified(keras2_file, target):
    report = checkpoints.restore(target, keras2_file("resnet50_imagenet.h5"))

    assert not report.verified and report.complete
    assert "not verified: Keras 2 HDF5 files carry no checksums" in str(report)


MANIFEST = json.loads((PUBLISHED / "manifest.json").read_text())


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_the_published_checkpoints_restore_verified(entry):
    path = PUBLISHED / entry["file"]
    info = normzoo.data.info(entry["dataset"], image_size=entry["image_size"])
    model = models.build(
        entry["model"], norm=entry["norm"], num_classes=info.num_classes, input_shape=info.image_shape
    )

    report = checkpoints.restore(model, path)

    assert report.verified and report.complete
    tensors = len(_datasets(path))
    assert report.verification == (
        f"the sha256 of each of its {tensors} tensors matches the one saved with it; "
        f"the file's sha256 is the one {PUBLISHED / 'manifest.json'} records"
    )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]


@pytest.fixture
def published_copy(tmp_path):
    """A copy of checkpoints/ (files and manifest) and the batch-norm entry."""
    shutil.copytree(PUBLISHED, tmp_path / "checkpoints")
    entry = next(e for e in MANIFEST if e["norm"] == "batch")
    return tmp_path / "checkpoints", entry


def _published_model(entry):
    info = normzoo.data.info(entry["dataset"], image_size=entry["image_size"])
    return models.build(
        entry["model"], norm=entry["norm"], num_classes=info.num_classes, input_shape=info.image_shape
    )


def test_a_published_file_that_is_not_the_one_its_manifest_records_is_refused(published_copy):
    directory, entry = published_copy
    manifest = json.loads((directory / "manifest.json").read_text())
    other = "0" * 64
    for item in manifest:
        if item["name"] == entry["name"]:
            item["sha256"] = other
    (directory / "manifest.json").write_text(json.dumps(manifest))
    path = directory / entry["file"]

    refusals.assert_refused_and_unchanged(
        _published_model(entry), path, str(directory / "manifest.json"), other, entry["sha256"],
        "Fix: restore the published file",
    )


def test_a_damaged_published_file_names_its_tensor(published_copy):
    directory, entry = published_copy
    path = directory / entry["file"]
    with h5py.File(path, "r") as file:
        variables = {}
        file.visititems(
            lambda name, node: variables.__setitem__(node.attrs["normzoo_variable"], name)
            if isinstance(node, h5py.Dataset)
            else None
        )
    dataset = variables["conv2_block1_1_bn/moving_variance"]
    with h5py.File(path, "r") as file:
        offset = file[dataset].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))

    refusals.assert_refused_and_unchanged(
        _published_model(entry), path, f"conv2_block1_1_bn/moving_variance (/{dataset})"
    )


def _fake_run(model_dir, model, write):
    """A finished run's model_dir whose model.weights.h5 `write` writes."""
    from normzoo.training import TrainConfig

    model_dir.mkdir()
    write(model, model_dir / "model.weights.h5")
    config = TrainConfig.from_flat(model="resnet20", model_dir=str(model_dir)).flat()
    (model_dir / "flags.json").write_text(
        json.dumps({"config": config, "environment": {"tensorflow": "x", "keras": "y"}})
    )
    (model_dir / "metrics.json").write_text(
        json.dumps({
            "steps": 10, "total_steps": 10, "test_accuracy": 0.5,
            # A run resumed after its first epoch: both parts' wall time count.
            "time_this_run": {"wall_seconds": 30.25},
            "history": [{"epoch": 0, "wall_seconds": 12.5}, {"epoch": 1, "wall_seconds": 30.25}],
        })
    )


def _publish(model_dir, checkpoints_dir):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "publish_checkpoint.py"),
         f"--model_dir={model_dir}", "--name=tiny", f"--checkpoints_dir={checkpoints_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_publish_checkpoint_ships_checksummed_files_only(source, tmp_path, target):
    _fake_run(tmp_path / "ours", source[0], checkpoints.save_weights)
    _fake_run(tmp_path / "keras", source[0], lambda model, path: model.save_weights(path))

    # Both at once: each spends most of its time importing TensorFlow.
    processes = [
        _publish(tmp_path / "ours", tmp_path / "published"),
        _publish(tmp_path / "keras", tmp_path / "refused"),
    ]
    (_, published_errors), (_, refused_errors) = [p.communicate(timeout=300) for p in processes]

    assert processes[0].returncode == 0, published_errors[-3000:]
    path = tmp_path / "published" / "tiny.weights.h5"
    manifest = json.loads((tmp_path / "published" / "manifest.json").read_text())
    assert manifest[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest[0]["wall_seconds"] == 42.8  # 12.5 + 30.25, rounded to 0.1 s
    assert manifest[0]["machine"].endswith(f", {os.cpu_count()} cores")
    report = checkpoints.restore(target, path)
    assert report.verified and "manifest.json records" in report.verification
    assert processes[1].returncode != 0
    assert "carries no checksums" in refused_errors and "re-run" in refused_errors
    assert not (tmp_path / "refused" / "tiny.weights.h5").exists()
