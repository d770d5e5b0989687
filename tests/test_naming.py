"""`normzoo.naming`: the layer-name rules, held against keras.applications'
ResNets (whose names the zoo extends and whose files it restores) and
against what the builders write."""

import keras
import pytest

from normzoo import models, naming


@pytest.fixture(scope="module")
def keras_names():
    """Layer names of keras.applications' ResNet50 and ResNet50V2."""
    return {
        version: [layer.name for layer in constructor(weights=None, input_shape=(64, 64, 3)).layers]
        for version, constructor in [
            ("v1", keras.applications.ResNet50),
            ("v2", keras.applications.ResNet50V2),
        ]
    }


def test_the_rules_name_layers_as_keras_applications_does(keras_names):
    v1, v2 = keras_names["v1"], keras_names["v2"]
    assert naming.CLASSIFIER in v1 and naming.CLASSIFIER in v2
    assert naming.conv(naming.STEM) in v1 and naming.norm(naming.STEM, "batch") in v1
    last_block = naming.block(5, 3)  # ResNet-50's stage conv5 has 3 units
    assert naming.add(last_block) in v1
    assert naming.conv(naming.branch(last_block, 3)) in v1
    assert naming.norm(naming.branch(naming.block(2, 1), 0), "batch") in v1  # a projection
    assert naming.norm(naming.preact(naming.block(2, 1)), "batch") in v2
    assert naming.norm(naming.POST, "batch") in v2


def test_the_names_of_keras_applications_resnets_are_read_as_published(keras_names):
    # He et al. (2016), Table 1: ResNet-50 has 3, 4, 6, 3 bottleneck blocks.
    assert naming.architecture(keras_names["v1"]) == (
        "stages conv2-conv5 of 3, 4, 6, 3 blocks, bottleneck, norm 'batch'"
    )
    assert naming.architecture(keras_names["v2"]) == (
        "stages conv2-conv5 of 3, 4, 6, 3 blocks, bottleneck, pre-activation, norm 'batch'"
    )
    assert not naming.is_preactivation(keras_names["v1"])


@pytest.mark.parametrize("norm", naming.NORMS)
def test_the_norm_the_builders_write_is_read_back_from_the_names(norm):
    model = models.build("resnet20", norm=norm, input_shape=(16, 16, 3), width=4)
    names = [layer.name for layer in model.layers]
    assert naming.norm_of(names) == norm
    assert naming.architecture(names) == f"stages conv2-conv4 of 3, 3, 3 blocks, norm {norm!r}"
    blocks = [naming.block_of_add(name) for name in names if naming.block_of_add(name)]
    assert blocks == [naming.block(stage, unit) for stage in (2, 3, 4) for unit in (1, 2, 3)]


def test_names_outside_the_scheme_show_no_norm_and_no_architecture():
    names = ["input_layer", "conv2d", "batch_normalization", "dense"]
    assert naming.norm_of(names) is None
    assert naming.architecture(names) is None
    assert not any(naming.is_norm(name) or naming.block_of_add(name) for name in names)
