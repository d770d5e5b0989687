"""TF1 checkpoints of TF-slim's resnet_v1_50 and resnet_v2_50 (article 002's
network) restore into normzoo models that compute TF-slim's logits.

TF-slim itself builds, randomizes and saves the networks in a subprocess
(slim_reference.py); the checkpoints also hold a global step and Momentum
slots, as a training run's do.
"""

import numpy as np
import pytest

import normzoo
from normzoo import checkpoints

SLIM = {
    "resnet_v1_50": ("resnet50", 1000, ["conv1_bn", "conv3_block2_2_bn", "conv5_block3_3_bn"]),
    "resnet_v2_50": (
        "resnet50v2",
        1001,
        ["conv2_block1_preact_bn", "conv4_block6_1_bn", "post_bn"],
    ),
}
# The preprocessing TF-slim's checkpoints were trained with: research/slim's
# preprocessing_factory maps resnet_v1 to vgg_preprocessing; its README says
# "ResNet V2 models use Inception pre-processing" ([-1, 1]).
PREPROCESSING = {"resnet_v1_50": "vgg", "resnet_v2_50": "tf"}


@pytest.mark.parametrize("network", sorted(SLIM))
def test_slim_checkpoint_builds_a_model_with_slims_logits(network, slim_checkpoints, tools):
    name, num_classes, norms = SLIM[network]
    inputs = np.load(slim_checkpoints / "images.npy")
    expected = np.load(slim_checkpoints / f"{network}_logits.npy")

    model = normzoo.build(
        name, weights=slim_checkpoints / f"{network}.ckpt", input_shape=inputs.shape[1:]
    )

    report = model.restore_report
    assert report.format == "tf_slim" and report.complete
    assert report.preprocess_mode == PREPROCESSING[network]
    assert sorted(report.restored) == sorted(v.path for v in model.weights)
    assert model.output_shape == (None, num_classes)
    assert model.get_layer("pool1_pool").padding == "same"  # the "slim" layout
    assert {layer.epsilon for layer in model.layers if layer.name.endswith("_bn")} == {1e-5}
    tools.assert_same_outputs(model(inputs, training=False).numpy(), expected)
    tools.assert_statistics_matter(model, inputs, expected, norms)


@pytest.mark.parametrize("network", sorted(SLIM))
def test_slim_step_counter_and_optimizer_slots_are_ignored_by_name(network, slim_checkpoints):
    source = checkpoints.read(slim_checkpoints / f"{network}.ckpt")

    ignored = dict(source.ignored)
    assert "global_step" in ignored
    slots = [name for name in ignored if name.endswith("/Momentum")]
    # One slot per trainable variable: every variable but the moving statistics.
    mapped = [
        tensor.source_name for weights in source.layers.values() for tensor in weights.values()
    ]
    trainable = [name for name in mapped if not name.endswith(("moving_mean", "moving_variance"))]
    assert sorted(slots) == sorted(f"{name}/Momentum" for name in trainable)
    assert len(ignored) == len(slots) + 1


def test_slim_variables_map_to_normzoo_names(slim_checkpoints):
    source = checkpoints.read(slim_checkpoints / "resnet_v2_50.ckpt")

    def source_name(layer, weight):
        return source.layers[layer][weight].source_name

    scope = "resnet_v2_50/"
    unit = scope + "block3/unit_6/bottleneck_v2/"
    assert source_name("conv1_conv", "bias") == scope + "conv1/biases"
    assert source_name("conv4_block6_preact_bn", "moving_mean") == unit + "preact/moving_mean"
    assert (
        source_name("conv4_block6_2_bn", "moving_variance")
        == unit + "conv2/BatchNorm/moving_variance"
    )
    assert source_name("conv4_block6_3_conv", "bias") == unit + "conv3/biases"
    assert (
        source_name("conv2_block1_0_conv", "kernel")
        == scope + "block1/unit_1/bottleneck_v2/shortcut/weights"
    )
    assert source_name("post_bn", "gamma") == scope + "postnorm/gamma"
    assert source.layers["predictions"]["kernel"].value.shape == (
        2048,
        1001,
    )  # was (1, 1, 2048, 1001)
