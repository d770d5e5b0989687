"""keras.applications ResNet weights restore into normzoo models that compute
what keras.applications computes, in every format they come in.

The source is keras.applications itself (weights=None, then random weights
and statistics), saved in each format; the reference is that model's
logits. The files as distributed are written in Keras 2's HDF5 format
(conftest.save_keras2_h5); that keras.applications' own loader reads those
files into the same model is checked too, so that the format, not only
normzoo's reading of it, is the real one. Under their distributed names,
they stand in for the real files: their md5 is made the one Keras
publishes (conftest.as_distributed), which restore then verifies.
"""

import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import normzoo

APPLICATIONS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet50v2": keras.applications.ResNet50V2,
    "resnet152v2": keras.applications.ResNet152V2,
}
# Where statistics are checked to matter: the first and the last BatchNorm.
FIRST_AND_LAST_NORM = {
    False: ["conv1_bn", "conv5_block3_3_bn"],
    True: ["conv2_block1_preact_bn", "post_bn"],
}


def _source(name, tools, **kwargs):
    model = APPLICATIONS[name](
        weights=None, input_shape=tools.IMAGE_SHAPE, classifier_activation=None, **kwargs
    )
    tools.randomize(model)
    return model


def _check_complete(model):
    report = model.restore_report
    assert report.complete and report.applied
    assert sorted(report.restored) == sorted(v.path for v in model.weights)


@pytest.fixture(scope="module")
def resnet50(tools):
    """keras.applications' ResNet50 with random weights, and its logits."""
    source = _source("resnet50", tools)
    return source, source(tools.images(), training=False).numpy()


def test_keras2_format_files_load_into_keras_applications_unchanged(resnet50, tools, tmp_path):
    source, expected = resnet50
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    tools.save_keras2_h5(source, path)

    loaded = keras.applications.ResNet50(
        weights=str(path), input_shape=tools.IMAGE_SHAPE, classifier_activation=None
    )

    np.testing.assert_array_equal(loaded(tools.images(), training=False).numpy(), expected)


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_distributed_weights_file_builds_the_keras_applications_model(
    name, tools, tmp_path, as_distributed
):
    path = tmp_path / f"{name}_weights_tf_dim_ordering_tf_kernels.h5"
    source = _source(name, tools)
    tools.save_keras2_h5(source, path)
    as_distributed(path)
    inputs = tools.images()
    expected = source(inputs, training=False).numpy()

    model = normzoo.build(name, weights=path, input_shape=tools.IMAGE_SHAPE)

    assert model.restore_report.format == "keras_legacy_h5"
    assert model.restore_report.verified
    _check_complete(model)
    assert model.get_layer("conv1_conv").use_bias  # the "keras" layout
    tools.assert_same_outputs(model(inputs, training=False).numpy(), expected)
    preactivation = name.endswith("v2")
    tools.assert_statistics_matter(model, inputs, expected, FIRST_AND_LAST_NORM[preactivation])
    # keras.applications' resnet.preprocess_input is mode "caffe", resnet_v2's "tf".
    assert model.restore_report.preprocess_mode == ("tf" if preactivation else "caffe")


@pytest.fixture(scope="module")
def notop(tools, tmp_path_factory):
    """notop(name): a `_notop.h5` file of keras.applications' `name` without
    its top (random weights), and that model's pooled features."""
    made = {}

    def make(name):
        if name not in made:
            path = (
                tmp_path_factory.mktemp(name)
                / f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
            )
            source = _source(name, tools, include_top=False, pooling="avg")
            tools.save_keras2_h5(source, path)
            made[name] = path, source(tools.images(), training=False).numpy()
        return made[name]

    return make


@pytest.mark.parametrize("name", ["resnet50", "resnet50v2"])
def test_distributed_notop_file_builds_the_feature_extractor(name, notop, tools, as_distributed):
    path, expected = notop(name)
    as_distributed(path)

    features = normzoo.build(name, weights=path, input_shape=tools.IMAGE_SHAPE)

    _check_complete(features)
    assert features.output_shape == (None, expected.shape[-1])
    tools.assert_same_outputs(features(tools.images(), training=False).numpy(), expected)


def test_notop_file_with_num_classes_restores_all_but_a_new_classifier(
    notop, tools, as_distributed
):
    path, expected = notop("resnet50")
    as_distributed(path)

    classifier = normzoo.build(
        "resnet50", weights=path, input_shape=tools.IMAGE_SHAPE, num_classes=7
    )

    report = classifier.restore_report
    assert report.complete
    assert report.skipped == ("predictions/kernel", "predictions/bias")
    assert classifier.output_shape == (None, 7)
    pooled = keras.Model(classifier.input, classifier.get_layer("avg_pool").output)
    tools.assert_same_outputs(pooled(tools.images(), training=False).numpy(), expected)


def _save_keras3_weights(model, path):
    model.save_weights(path)


def _save_keras3_legacy_h5(model, path):
    # Keras 3's writer of the Keras 2 format: weight names without ":0".
    import h5py

    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)


def _save_keras_file(model, path):
    model.save(path)


@pytest.mark.parametrize(
    "save, file_name, expected_format",
    [
        (_save_keras3_weights, "resnet50.weights.h5", "keras_weights_h5"),
        (_save_keras3_legacy_h5, "resnet50_keras3_legacy.h5", "keras_legacy_h5"),
        (_save_keras_file, "resnet50.keras", "keras_file"),
    ],
    ids=["weights.h5", "keras3-legacy-h5", "keras-file"],
)
def test_keras3_files_of_keras_applications_restore_its_outputs(
    save, file_name, expected_format, resnet50, tools, tmp_path
):
    source, expected = resnet50
    path = tmp_path / file_name
    save(source, path)

    model = normzoo.build("resnet50", weights=path, input_shape=tools.IMAGE_SHAPE)

    assert model.restore_report.format == expected_format
    assert model.get_layer("conv1_bn").epsilon == 1.001e-5
    _check_complete(model)
    inputs = tools.images()
    tools.assert_same_outputs(model(inputs, training=False).numpy(), expected)
