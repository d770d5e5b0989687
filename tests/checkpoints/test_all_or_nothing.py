"""A restore is all or nothing, and every failure names its cause and fix.

Small members of the zoo (ResNet-18 at width 4 on 32x32 images) carry the
same layer names and code paths as the full-size models. The model
restored into always starts with other values than the checkpoint's, so
"unchanged" is checked against its own values, bit for bit.
"""

import shutil
import zipfile

import h5py
import numpy as np
import pytest
import tensorflow as tf

from normzoo import checkpoints, models
from normzoo.checkpoints import RestoreError
from tests.checkpoints import refusals

SHAPE = (32, 32, 3)


def _tiny(name="resnet18", num_classes=5):
    return models.build(name, input_shape=SHAPE, width=4, num_classes=num_classes)


@pytest.fixture(scope="module")
def source(tools, tmp_path_factory):
    """A random tiny ResNet-18, saved as .weights.h5."""
    model = _tiny()
    tools.randomize(model, seed=1)
    path = tmp_path_factory.mktemp("source") / "source.weights.h5"
    model.save_weights(path)
    return model, path


@pytest.fixture
def saved(source, tools, tmp_path):
    """The source model, a copy of its file that a test may edit, and a
    differently random model of the same architecture to restore into."""
    model, path = source
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    target = _tiny()
    tools.randomize(target, seed=2)
    return model, copy, target


def _edit_h5(path, edit):
    """Calls edit(file, {layer name: its vars group}) on a .weights.h5 file."""
    with h5py.File(path, "r+") as file:
        groups = {
            layer["vars"].attrs["name"]: layer["vars"]
            for layer in file["layers"].values()
            if "vars" in layer
        }
        edit(file, groups)


def test_a_missing_statistic_is_named_and_nothing_changes(saved):
    source, path, target = saved
    _edit_h5(path, lambda file, groups: groups["conv3_block2_2_bn"].__delitem__("3"))
    with refusals.unchanged(target), pytest.raises(
        RestoreError, match="conv3_block2_2_bn/moving_variance"
    ) as caught:
        checkpoints.restore(target, path)

    report = caught.value.report
    assert report.missing == ("conv3_block2_2_bn/moving_variance",)
    assert report.unrestored_statistics == ("conv3_block2_2_bn/moving_variance",)
    assert not report.applied and not report.complete


def test_non_strict_restores_the_rest_and_reports_exactly_what_did_not(saved):
    source, path, target = saved
    _edit_h5(path, lambda file, groups: groups["conv3_block2_2_bn"].__delitem__("3"))
    kept = target.get_layer("conv3_block2_2_bn").moving_variance.numpy().copy()

    report = checkpoints.restore(target, path, strict=False)

    assert report.applied and not report.complete
    assert report.missing == ("conv3_block2_2_bn/moving_variance",)
    assert not (report.unexpected or report.shape_mismatched or report.non_finite)
    assert len(report.restored) == len(target.weights) - 1
    expected = {v.path: v.numpy() for v in source.weights}
    for variable in target.weights:
        if variable.path == "conv3_block2_2_bn/moving_variance":
            np.testing.assert_array_equal(variable.numpy(), kept)
        else:
            np.testing.assert_array_equal(variable.numpy(), expected[variable.path])


def test_a_classifier_of_another_size_fails_the_whole_restore(saved, tmp_path):
    # The classifier is the last layer restored: a restore that assigned as
    # it went would have changed every other layer by then.
    _, path, _ = saved
    target = _tiny(num_classes=7)
    with refusals.unchanged(target), pytest.raises(RestoreError) as caught:
        checkpoints.restore(target, path)

    message = str(caught.value)
    assert "predictions/kernel: model (32, 7), checkpoint (32, 5)" in message
    assert "skip=['predictions']" in message


def test_skip_restores_everything_but_the_named_layers(saved):
    source, path, _ = saved
    target = _tiny(num_classes=7)
    head = [v.numpy().copy() for v in target.get_layer("predictions").weights]

    report = checkpoints.restore(target, path, skip=["predictions"])

    assert report.complete and report.skipped == ("predictions/kernel", "predictions/bias")
    head_tensors = checkpoints.read(path).layers["predictions"].values()
    assert {name for name, _ in report.ignored} == {tensor.source_name for tensor in head_tensors}
    for variable, value in zip(target.get_layer("predictions").weights, head):
        np.testing.assert_array_equal(variable.numpy(), value)
    np.testing.assert_array_equal(
        target.get_layer("conv1_bn").moving_mean.numpy(),
        source.get_layer("conv1_bn").moving_mean.numpy(),
    )


def test_skip_of_a_name_the_model_lacks_is_refused(saved):
    _, path, target = saved
    with pytest.raises(ValueError, match="'predictionz'"):
        checkpoints.restore(target, path, skip=["predictionz"])


@pytest.mark.parametrize("strict", [True, False])
def test_a_tensor_with_nan_is_named_and_never_assigned(saved, strict):
    _, path, target = saved

    def poison(file, groups):
        variance = groups["conv2_block1_1_bn"]["3"]
        value = variance[()]
        value[0] = np.nan
        variance[()] = value

    _edit_h5(path, poison)
    kept = target.get_layer("conv2_block1_1_bn").moving_variance.numpy().copy()

    if strict:
        with refusals.unchanged(target), pytest.raises(RestoreError, match="NaN or Inf") as caught:
            checkpoints.restore(target, path)
        assert "restore an earlier checkpoint" in str(caught.value)
        report = caught.value.report
    else:
        report = checkpoints.restore(target, path, strict=False)
        np.testing.assert_array_equal(
            target.get_layer("conv2_block1_1_bn").moving_variance.numpy(), kept
        )
    assert [variable for variable, _ in report.non_finite] == ["conv2_block1_1_bn/moving_variance"]


def test_an_unexpected_tensor_is_named(saved):
    _, path, target = saved

    def add_layer(file, groups):
        extra = file["layers"].create_group("dense_extra").create_group("vars")
        extra.attrs["name"] = "extra_head"
        extra["0"] = np.zeros((3, 3), "float32")

    _edit_h5(path, add_layer)
    with pytest.raises(
        RestoreError, match="matching no model variable: /layers/dense_extra/vars/0"
    ):
        checkpoints.restore(target, path)


def test_another_architecture_is_described_in_the_error(saved):
    _, path, _ = saved
    target = _tiny("resnet34")
    with refusals.unchanged(target), pytest.raises(RestoreError) as caught:
        checkpoints.restore(target, path)

    message = str(caught.value)
    assert "stages conv2-conv5 of 2, 2, 2, 2 blocks" in message
    assert "stages conv2-conv5 of 3, 4, 6, 3 blocks" in message
    assert "normzoo.build(name, weights=path)" in message


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / "resnet50.weights.h5"
    with pytest.raises(RestoreError, match=f"No checkpoint at {path}"):
        checkpoints.restore(_tiny(), path)


def test_a_damaged_hdf5_file_is_named_with_the_problem(tmp_path):
    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # HDF5's signature, then nothing
    with pytest.raises(RestoreError, match="truncated or damaged") as caught:
        checkpoints.restore(_tiny(), path)
    assert str(path) in str(caught.value)


def test_a_file_of_unknown_format_lists_the_known_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint")
    with pytest.raises(RestoreError) as caught:
        checkpoints.restore(_tiny(), path)
    for description in checkpoints.FORMATS.values():
        assert description in str(caught.value)


def test_an_hdf5_file_that_is_not_a_keras_file_is_named(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as file:
        file["images"] = np.zeros((2, 2))
    with pytest.raises(RestoreError, match="not a Keras weights file.*images"):
        checkpoints.restore(_tiny(), path)


def test_a_directory_without_checkpoints_points_to_what_it_holds(saved, tmp_path):
    _, path, target = saved
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(RestoreError, match="checkpoints/ subdirectory"):
        checkpoints.restore(target, tmp_path)


def _class_named_weights_file(directory, source_path):
    # As Keras 3 versions before layer names were recorded wrote them.
    path = directory / "unnamed.weights.h5"
    shutil.copy(source_path, path)
    with h5py.File(path, "r+") as file:
        for layer in file["layers"].values():
            if "vars" in layer:
                del layer["vars"].attrs["name"]
    return path


def _keras_2_13_weights_file(directory, source_path):
    path = directory / "keras213.weights.h5"
    with h5py.File(path, "w") as file:
        file.create_group("_layer_checkpoint_dependencies/conv1_conv/vars")
    return path


def _caffe_style_resnet50_file(directory, source_path):
    # The layer names of Keras <= 2.2.4's ResNet50 file.
    path = directory / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [b"conv1", b"bn_conv1", b"res2a_branch2a", b"fc1000"]
    return path


def _zip_without_weights(directory, source_path):
    path = directory / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return path


def _damaged_tf_checkpoint(directory, source_path):
    (directory / "ckpt-1.index").write_bytes(b"not an index")
    (directory / "ckpt-1.data-00000-of-00001").write_bytes(b"")
    return directory / "ckpt-1"


def _tf1_checkpoint_of_another_network(directory, source_path):
    variables = {"vgg_16/conv1/conv1_1/weights": tf.Variable(np.zeros((3, 3, 3, 4), "float32"))}
    path = str(directory / "vgg.ckpt")
    tf.compat.v1.train.Saver(var_list=variables).save(None, path, write_meta_graph=False)
    return path


def _tf2_checkpoint_without_a_model(directory, source_path):
    return tf.train.Checkpoint(step=tf.Variable(3)).save(str(directory / "ckpt"))


@pytest.mark.parametrize(
    "make, message",
    [
        (_class_named_weights_file, "names its layers only by class.*save it again"),
        (_keras_2_13_weights_file, "Keras 2.13-2.15.*save_format='h5'"),
        (_caffe_style_resnet50_file, "Keras <= 2.2.4.*conv1_conv"),
        (_zip_without_weights, "not a .keras model file"),
        (_damaged_tf_checkpoint, "Cannot read the TensorFlow checkpoint"),
        (_tf1_checkpoint_of_another_network, "not of a TF-slim ResNet.*vgg_16/conv1"),
        (_tf2_checkpoint_without_a_model, "without model variables"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_a_source_normzoo_cannot_read_is_refused_with_the_fix(make, message, source, tmp_path):
    _, source_path = source
    path = make(tmp_path, source_path)
    target = _tiny()
    with refusals.unchanged(target), pytest.raises(RestoreError, match=message):
        checkpoints.restore(target, path)
