"""normzoo's own files restore every variable: the training loop's
checkpoints and final weights, `.weights.h5` and `.keras` files; and
`build(name, weights=...)` takes from them what they record."""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format

import normzoo
from normzoo import checkpoints, models
from normzoo.training import train

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """A few steps of the real training loop (WRN-10-1 on 8x8 digits): its
    model, and the model_dir with checkpoints/ and model.weights.h5."""
    model_dir = tmp_path_factory.mktemp("run")
    config = tiny_config(model_dir, epochs=1)
    return train(config).model, model_dir


@pytest.mark.parametrize(
    "relative_path, expected_format",
    [
        ("checkpoints", "normzoo_checkpoint"),
        ("checkpoints/ckpt-3", "normzoo_checkpoint"),
        ("checkpoints/ckpt-3.index", "normzoo_checkpoint"),
        ("model.weights.h5", "keras_weights_h5"),
    ],
)
def test_training_outputs_restore_the_trained_model(relative_path, expected_format, trained):
    model, model_dir = trained
    inputs = np.random.default_rng(0).standard_normal((4, *model.input_shape[1:])).astype("float32")

    restored = normzoo.build(
        "wrn_10_1", weights=model_dir / relative_path, input_shape=model.input_shape[1:]
    )

    report = restored.restore_report
    assert report.format == expected_format and report.complete
    # What the run fed, as its flags.json records it.
    assert report.preprocess_mode == "tf" and "flags.json" in report.preprocessing_origin
    # TensorFlow's CRC32C per tensor, or save_weights' sha256 per tensor.
    assert report.verified, report
    assert len(report.restored) == len(restored.weights) == len(model.weights)
    restored_values = {variable.path: variable.numpy() for variable in restored.weights}
    for variable in model.weights:  # trained statistics included
        np.testing.assert_array_equal(
            restored_values[variable.path], variable.numpy(), variable.path
        )
    np.testing.assert_array_equal(
        restored(inputs, training=False).numpy(), model(inputs, training=False).numpy()
    )


def test_training_checkpoint_optimizer_state_is_ignored_by_name(trained):
    _, model_dir = trained
    report = checkpoints.read(model_dir / "checkpoints")
    reasons = dict(report.ignored)
    assert "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in reasons
    assert "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE" in reasons
    assert all(not key.startswith("model/") for key in reasons)


def _randomized(tools, name, **overrides):
    model = models.build(name, input_shape=(32, 32, 3), num_classes=5, **overrides)
    tools.randomize(model)
    return model


@pytest.mark.parametrize(
    "name, layout, norm",
    [
        ("resnet18", "keras", "batch"),
        ("resnet18", "torchvision", "batch"),
        ("resnet18", "slim", "batch"),
        ("resnet18", "torchvision", "layer"),
        ("resnet50v2", "slim", "skipinit"),
    ],
)
def test_keras_file_builds_the_layout_it_was_saved_in(name, layout, norm, tools, tmp_path):
    source = _randomized(tools, name, layout=layout, norm=norm, width=4)
    path = tmp_path / "model.keras"
    source.save(path)
    inputs = tools.images()

    model = normzoo.build(name, weights=path, input_shape=(32, 32, 3))

    assert model.get_config() == {**source.get_config(), "name": model.name}
    assert model.restore_report.complete
    np.testing.assert_array_equal(
        model(inputs, training=False).numpy(), source(inputs, training=False).numpy()
    )


@pytest.mark.parametrize(
    "name, norm, overrides",
    [
        ("resnet20", "skipinit", {"width": 4}),
        ("resnet20", "layer", {"width": 4}),
        ("wrn_10_2", "none", {}),
    ],
)
def test_weights_file_builds_the_norm_width_and_classes_it_holds(
    name, norm, overrides, tools, tmp_path
):
    source = _randomized(tools, name, norm=norm, **overrides)
    path = tmp_path / "model.weights.h5"
    source.save_weights(path)
    inputs = tools.images()

    model = normzoo.build(name, weights=path, input_shape=(32, 32, 3))

    assert model.count_params() == source.count_params()
    assert model.output_shape == (None, 5)
    # Nothing next to a bare weights file says what its inputs were.
    assert model.restore_report.preprocess_mode is None
    np.testing.assert_array_equal(
        model(inputs, training=False).numpy(), source(inputs, training=False).numpy()
    )


def test_an_argument_contradicting_the_checkpoint_is_refused(tools, tmp_path):
    path = tmp_path / "model.weights.h5"
    _randomized(tools, "resnet20", norm="skipinit", width=4).save_weights(path)
    with pytest.raises(ValueError, match="norm='batch' contradicts .* norm='skipinit'"):
        normzoo.build("resnet20", weights=path, norm="batch")
    with pytest.raises(ValueError, match="width=8 contradicts .* width=4"):
        normzoo.build("resnet20", weights=path, width=8)


def test_v1_weights_without_conv_biases_need_the_layout_named(tools, tmp_path):
    source = _randomized(tools, "resnet18", layout="torchvision", width=4)
    path = tmp_path / "model.weights.h5"
    source.save_weights(path)
    with pytest.raises(ValueError, match="pass layout='torchvision' or layout='slim'"):
        normzoo.build("resnet18", weights=path, input_shape=(32, 32, 3))

    model = normzoo.build("resnet18", weights=path, input_shape=(32, 32, 3), layout="torchvision")

    inputs = tools.images()
    np.testing.assert_array_equal(
        model(inputs, training=False).numpy(), source(inputs, training=False).numpy()
    )


def test_num_classes_zero_leaves_the_checkpoints_classifier_out(tools, tmp_path):
    source = _randomized(tools, "resnet18", width=4)
    path = tmp_path / "model.weights.h5"
    source.save_weights(path)

    features = normzoo.build("resnet18", weights=path, input_shape=(32, 32, 3), num_classes=0)

    report = features.restore_report
    assert report.complete and not report.skipped
    assert {reason for _, reason in report.ignored} == {"the model has no layer 'predictions'"}
    assert len(report.ignored) == 2
    assert features.output_shape == (None, 32)
    inputs = tools.images()
    pooled = keras.Model(source.input, source.get_layer("avg_pool").output)
    np.testing.assert_array_equal(
        features(inputs, training=False).numpy(), pooled(inputs, training=False).numpy()
    )


def test_restore_under_a_mirrored_strategy_reaches_every_replica(
    mirrored_strategy, tools, tmp_path
):
    source = _randomized(tools, "resnet18", width=4)
    path = tmp_path / "model.weights.h5"
    source.save_weights(path)
    inputs = tools.images(batch_size=4)
    expected = source(inputs, training=False).numpy()

    with mirrored_strategy.scope():
        model = normzoo.build("resnet18", weights=path, input_shape=(32, 32, 3))

    @tf.function
    def replica_outputs():
        return mirrored_strategy.run(lambda: model(inputs, training=False))

    per_replica = mirrored_strategy.experimental_local_results(replica_outputs())
    assert len(per_replica) == 2
    for outputs in per_replica:
        tools.assert_same_outputs(outputs.numpy(), expected)


def test_legacy_whole_model_h5_restores_its_weights(tools, tmp_path):
    source = _randomized(tools, "resnet18", width=4)
    path = tmp_path / "model.h5"
    legacy_h5_format.save_model_to_hdf5(source, str(path))
    inputs = tools.images()

    model = normzoo.build("resnet18", weights=path, input_shape=(32, 32, 3))

    assert model.restore_report.format == "keras_legacy_h5" and model.restore_report.complete
    np.testing.assert_array_equal(
        model(inputs, training=False).numpy(), source(inputs, training=False).numpy()
    )


def test_any_tf2_checkpoint_of_a_model_restores_without_its_optimizer(tools, tmp_path):
    source = _randomized(tools, "resnet18", width=4)
    optimizer = keras.optimizers.Adam()
    optimizer.build(source.trainable_variables)
    path = tf.train.Checkpoint(network=source, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    inputs = tools.images()

    model = normzoo.build("resnet18", weights=path, input_shape=(32, 32, 3))

    report = model.restore_report
    assert report.format == "tf_object_checkpoint" and report.complete
    assert any(name.startswith("optimizer/") for name, _ in report.ignored)
    np.testing.assert_array_equal(
        model(inputs, training=False).numpy(), source(inputs, training=False).numpy()
    )


def _grey_checkpoint(tools, tmp_path):
    """A randomized ResNet-20 (width 4, 5 classes) for 1-channel 32x32
    images, as the digits checkpoints are, and its .weights.h5."""
    source = models.build("resnet20", input_shape=(32, 32, 1), num_classes=5, width=4)
    tools.randomize(source)
    path = tmp_path / "grey.weights.h5"
    source.save_weights(path)
    return source, path


def test_a_checkpoint_of_grey_images_builds_with_its_input_channels(tools, tmp_path):
    source, path = _grey_checkpoint(tools, tmp_path)
    inputs = tools.images(shape=(32, 32, 1))

    model = normzoo.build("resnet20", weights=path)

    assert model.input_shape == (None, 32, 32, 1)
    assert model.restore_report.complete
    np.testing.assert_array_equal(
        model(inputs, training=False).numpy(), source(inputs, training=False).numpy()
    )


def test_input_shape_with_other_channels_than_the_checkpoint_names_input_shape(tools, tmp_path):
    _, path = _grey_checkpoint(tools, tmp_path)
    with pytest.raises(ValueError) as error:
        normzoo.build("resnet20", weights=path, input_shape=(32, 32, 3))
    message = str(error.value)
    assert "input_shape=(32, 32, 3) has 3 channels" in message
    assert "takes 1" in message and "pass input_shape=(32, 32, 1)" in message

    # Restoring into a model already built for 3 channels: the fix names
    # input_shape, not the call that already takes the checkpoint's.
    model = models.build("resnet20", input_shape=(32, 32, 3), num_classes=5, width=4)
    before = [variable.numpy() for variable in model.weights]
    with pytest.raises(checkpoints.RestoreError) as error:
        checkpoints.restore(model, path)
    fix = str(error.value).split("\nFix: ")[1]
    assert fix.startswith(
        "the checkpoint's first convolution takes 1 input channel(s), the model's 3: build the "
        "model with input_shape=(height, width, 1)"
    )
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize("name", ["resnet50", "resnet101v2"])
def test_weights_imagenet_says_normzoo_never_downloads_and_where_the_file_is(name):
    # Keras' own constants (keras.applications downloads from there) are
    # the reference for the address in the message.
    from keras.src.applications import resnet as keras_resnet

    file_name = f"{name}_weights_tf_dim_ordering_tf_kernels.h5"
    with pytest.raises(ValueError) as error:
        normzoo.build(name, weights="imagenet")
    message = str(error.value)
    assert message.startswith("weights='imagenet' names no file: normzoo never downloads weights.")
    assert f"{keras_resnet.BASE_WEIGHTS_PATH}{file_name}" in message
    # The address keras.applications downloads from, independently of its constants.
    address = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
    assert f"{address}{file_name} (" in message
    assert f"normzoo.build({name!r}, weights='/path/to/{file_name}')" in message


def test_weights_imagenet_for_a_model_keras_publishes_nothing_for_says_so():
    with pytest.raises(ValueError) as error:
        normzoo.build("resnet20", weights="imagenet")
    message = str(error.value)
    assert "never downloads" in message and "(not resnet20)" in message
    # What there is instead: the checkpoints shipped with normzoo, by name.
    names = [entry["name"] for entry in json.loads((ROOT / "checkpoints" / "manifest.json").read_text())]
    assert f"normzoo ships {', '.join(names)} (pass the name)" in message


def test_an_invalid_argument_is_named_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown norm 'group'; valid values are 'batch'"):
        normzoo.build("resnet20", weights=tmp_path / "missing.weights.h5", norm="group")


def test_normzoo_build_without_weights_builds_what_models_build_builds():
    arguments = {"norm": "layer", "input_shape": (16, 16, 3), "num_classes": 3, "width": 4}
    built, reference = normzoo.build("resnet20", **arguments), models.build("resnet20", **arguments)
    assert [(v.path, v.shape) for v in built.weights] == [
        (v.path, v.shape) for v in reference.weights
    ]
    assert not hasattr(built, "restore_report")


def test_weights_that_are_no_path_are_refused_naming_weights():
    with pytest.raises(TypeError, match=r"weights must be the path of a checkpoint .* got 3 of type int"):
        normzoo.build("resnet20", weights=3)


def test_a_file_named_like_a_word_is_still_read(tools, tmp_path, monkeypatch):
    source, path = _grey_checkpoint(tools, tmp_path)
    path.rename(tmp_path / "imagenet")
    monkeypatch.chdir(tmp_path)
    inputs = tools.images(shape=(32, 32, 1))

    model = normzoo.build("resnet20", weights="imagenet")

    np.testing.assert_array_equal(
        model(inputs, training=False).numpy(), source(inputs, training=False).numpy()
    )
