"""`build` and `names`: what each name and argument gives, and clear errors."""

import keras
import numpy as np
import pytest

from normzoo import layers, models, naming
from normzoo.models import resnet

_ISSUE_NAMES = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnet50v2", "resnet101v2", "resnet152v2",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "wrn_16_4", "wrn_28_10",
]  # fmt: skip


def test_names_lists_every_family_member():
    assert set(_ISSUE_NAMES) <= set(models.names())
    assert models.names() == sorted(models.names())


def test_an_unknown_name_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet51'.*resnet50.*wrn_<n>_<k>"):
        models.build("resnet51")


@pytest.mark.parametrize("name", ["wrn_12_2", "wrn_16_0"])
def test_an_invalid_wide_resnet_is_refused(name):
    with pytest.raises(ValueError, match="Wide-ResNet"):
        models.build(name)


@pytest.mark.parametrize("name", ["resnet51", "wrn_12_2", "wrn_28"])
def test_check_name_refuses_what_build_refuses(name):
    with pytest.raises(ValueError):
        models.check_name(name)


def test_check_name_accepts_every_listed_name_and_any_wide_resnet():
    for name in [*models.names(), "wrn_1000_2", "wrn_22_3"]:
        models.check_name(name)


def test_an_unknown_norm_is_refused_with_the_valid_norms():
    with pytest.raises(ValueError, match="'group'.*'batch', 'layer', 'skipinit', 'none'"):
        models.build("resnet20", norm="group")


def test_an_unknown_override_is_refused_with_the_valid_overrides():
    with pytest.raises(ValueError, match=r"dropout_rate.*valid overrides: layout, width"):
        models.build("resnet50", dropout_rate=0.3)


@pytest.mark.parametrize(
    "norm, override", [("batch", {"skipinit_alpha": 1.0}), ("layer", {"synchronized_bn": True})]
)
def test_an_override_for_another_norm_is_refused(norm, override):
    with pytest.raises(ValueError, match="only"):
        models.build("resnet20", norm=norm, **override)


def test_build_takes_no_weights_and_names_the_call_that_does():
    with pytest.raises(TypeError, match=r"takes no weights.*normzoo\.build\('resnet20', weights="):
        models.build("resnet20", weights="model.weights.h5")


@pytest.mark.parametrize(
    "name, input_shape, num_classes, override",
    [("resnet50", (224, 224, 3), 1000, "layout"), ("resnet20", (32, 32, 3), 10, "width"),
     ("wrn_16_4", (32, 32, 3), 10, "dropout_rate")],
)  # fmt: skip
def test_arguments_are_the_family_defaults(name, input_shape, num_classes, override):
    # ImageNet at 224x224 with 1000 classes (He et al. 2016), CIFAR-10 at 32x32.
    defaults = models.arguments(name)
    assert defaults["norm"] == "batch"
    assert defaults["input_shape"] == input_shape and defaults["num_classes"] == num_classes
    assert override in defaults and "name" not in defaults


def test_check_arguments_refuses_what_build_refuses_and_builds_nothing():
    assert models.check_arguments("resnet20", input_shape=[16, 16, 1]) == (16, 16, 1)
    assert models.check_arguments("resnet20") is None
    for arguments, error in [
        ({"norm": "group"}, ValueError),
        ({"num_classes": -1}, ValueError),
        ({"input_shape": (32, 32)}, ValueError),
    ]:
        with pytest.raises(error):
            models.check_arguments("resnet20", **arguments)
        with pytest.raises(error):
            models.build("resnet20", **arguments)


def test_the_default_arguments_are_what_build_builds():
    model = models.build("resnet20")
    defaults = models.arguments("resnet20")
    assert model.input_shape[1:] == defaults["input_shape"]
    assert model.output_shape[-1] == defaults["num_classes"]
    assert model.get_layer("conv1_conv").filters == defaults["width"]


def _layers_of(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def _residual_blocks(model):
    return _layers_of(model, keras.layers.Add)


@pytest.mark.parametrize("name", ["resnet20", "wrn_10_1", "resnet18"])
def test_norms_are_placed_as_documented(name):
    shape = {"input_shape": (32, 32, 3)}
    batch = models.build(name, norm="batch", **shape)
    layer = models.build(name, norm="layer", **shape)
    skipinit = models.build(name, norm="skipinit", skipinit_alpha=0.25, **shape)
    none = models.build(name, norm="none", **shape)

    batch_norms = _layers_of(batch, layers.BatchNorm)
    layer_norms = _layers_of(layer, layers.LayerNorm)
    assert len(batch_norms) == len(layer_norms) > 0
    # Kept as Keras keeps a built LayerNormalization's axes: sorted lists.
    assert all(norm.axis == [1, 2, 3] and norm.param_axis == [-1] for norm in layer_norms)
    assert [n.name[:-3] for n in batch_norms] == [n.name[:-3] for n in layer_norms]

    for model in (skipinit, none):
        assert not _layers_of(model, layers.BatchNorm) and not _layers_of(model, layers.LayerNorm)
        assert all(conv.use_bias for conv in _layers_of(model, keras.layers.Conv2D))
    # One SkipInit scalar per residual branch, at its end, before the addition.
    scalars = _layers_of(skipinit, layers.SkipInit)
    adds = _residual_blocks(skipinit)
    assert len(scalars) == len(adds) > 0
    for scalar, add in zip(scalars, adds):
        assert add.input[1] is scalar.output
        assert float(scalar.alpha.numpy()) == 0.25
    assert not _layers_of(none, layers.SkipInit)


def test_synchronized_bn_reaches_every_batch_norm():
    model = models.build("resnet20", synchronized_bn=True)
    norms = _layers_of(model, layers.BatchNorm)
    assert norms and all(norm.synchronized for norm in norms)


@pytest.mark.parametrize(
    "name, features", [("resnet20", 64), ("wrn_10_2", 128), ("resnet50", 2048)]
)
def test_zero_classes_gives_the_pooled_features(name, features):
    model = models.build(name, num_classes=0, input_shape=(32, 32, 3))
    assert model.output_shape == (None, features)
    assert model.layers[-1].name == "avg_pool"


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = [layer.name for layer in models.build("resnet20").layers]
    models.build("wrn_10_1")
    assert [layer.name for layer in models.build("resnet20").layers] == first
    assert all(not name.startswith(("conv2d", "batch_norm", "activation")) for name in first)


def test_wide_resnet_dropout_sits_between_the_two_convolutions():
    model = models.build("wrn_10_1", dropout_rate=0.3)
    dropout = model.get_layer("conv2_block1_dropout")
    assert dropout.rate == 0.3
    assert dropout.input is model.get_layer("conv2_block1_1_relu").output
    assert model.get_layer("conv2_block1_2_conv").input is dropout.output
    assert not [layer for layer in models.build("wrn_10_1").layers if "dropout" in layer.name]


@pytest.mark.parametrize(
    "name, overrides", [("resnet20", {}), ("resnet18", {"width": 8, "layout": "slim"})]
)
def test_height_and_width_may_be_left_open(name, overrides):
    model = models.build(name, num_classes=3, input_shape=(None, None, 3), **overrides)
    for size in (32, 40):
        assert model(np.zeros((2, size, size, 3), "float32")).shape == (2, 3)


_NORMS_TEXT = "'batch', 'layer', 'skipinit', 'none'"
# (model, arguments, exception, what the message must contain: the argument,
# the value and what is valid). Before build checked them, the first two
# built a BatchNorm model, num_classes=True a 1-class one, and the rest
# failed inside Keras without naming the argument.
_BAD_ARGUMENTS = {
    "norm_empty": ("resnet20", {"norm": ""}, ValueError, ["norm ''", _NORMS_TEXT]),
    "norm_zero": ("resnet20", {"norm": 0}, ValueError, ["norm 0", _NORMS_TEXT]),
    "classes_negative": ("resnet20", {"num_classes": -1}, ValueError, ["num_classes", ">= 0", "got -1"]),
    "classes_float": ("resnet20", {"num_classes": 2.5}, TypeError, ["num_classes", ">= 0", "got 2.5"]),
    "classes_string": ("resnet20", {"num_classes": "10"}, TypeError, ["num_classes", ">= 0", "got '10'"]),
    "classes_bool": ("resnet20", {"num_classes": True}, TypeError, ["num_classes", ">= 0", "got True"]),
    "width_zero": ("resnet20", {"width": 0}, ValueError, ["width", ">= 1", "got 0"]),
    "width_float": ("resnet18", {"width": 2.5}, TypeError, ["width", ">= 1", "got 2.5"]),
    "input_rank": ("resnet20", {"input_shape": (32, 32)}, ValueError, ["input_shape", "(height, width, channels)", "got (32, 32)"]),
    "input_int": ("resnet20", {"input_shape": 32}, TypeError, ["input_shape", "(height, width, channels)", "got 32"]),
    "input_zero_channels": ("wrn_10_1", {"input_shape": (8, 8, 0)}, ValueError, ["input_shape", "got (8, 8, 0)"]),
    "input_open_channels": ("wrn_10_1", {"input_shape": (8, 8, None)}, ValueError, ["input_shape", "got (8, 8, None)"]),
    "input_negative": ("resnet18", {"input_shape": (-1, 32, 3)}, ValueError, ["input_shape", "got (-1, 32, 3)"]),
    "alpha_string": ("resnet20", {"norm": "skipinit", "skipinit_alpha": "x"}, TypeError, ["skipinit_alpha", "number", "got 'x'"]),
    "alpha_nan": ("resnet20", {"norm": "skipinit", "skipinit_alpha": float("nan")}, ValueError, ["skipinit_alpha", "finite", "got nan"]),
    "sync_string": ("resnet20", {"synchronized_bn": "yes"}, TypeError, ["synchronized_bn", "True or False", "got 'yes'"]),
    "activation": ("resnet20", {"classifier_activation": "bogus"}, ValueError, ["classifier_activation 'bogus'", "'softmax'"]),
    "layout": ("resnet18", {"layout": "tf"}, ValueError, ["layout 'tf'", "keras, torchvision, slim"]),
    "dropout": ("wrn_10_1", {"dropout_rate": 1.0}, ValueError, ["dropout_rate", ">= 0 and < 1", "got 1.0"]),
    "name_none": (None, {}, TypeError, ["model name", "got None", "normzoo.models.names()"]),
    "name_int": (20, {}, TypeError, ["model name", "got 20", "normzoo.models.names()"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_BAD_ARGUMENTS))
def test_a_bad_argument_is_refused_naming_it_its_value_and_what_is_valid(case):
    name, arguments, exception, expected = _BAD_ARGUMENTS[case]
    with pytest.raises(exception) as error:
        models.build(name, **arguments)
    for text in expected:
        assert text in str(error.value)


def test_numpy_integers_and_a_list_shape_are_accepted_as_numbers_and_a_shape():
    model = models.build(
        "resnet20", num_classes=np.int64(3), width=np.int64(2), input_shape=[8, 8, np.int64(1)]
    )
    assert model.input_shape == (None, 8, 8, 1)
    assert model.output_shape == (None, 3)
    assert model.get_layer("conv1_conv").filters == 2


def test_the_model_name_override_of_the_builders_is_not_offered():
    # build's first argument is the model name, so a builder's `name` cannot
    # be passed through it: the error must not list it as valid.
    with pytest.raises(ValueError) as error:
        models.build("resnet20", layout="keras")
    assert str(error.value).endswith(
        "valid overrides: width, skipinit_alpha, synchronized_bn, classifier_activation."
    )


# Every ImageNet variant (small: width 8 builds in a fraction of a second),
# the CIFAR ResNets and two Wide-ResNets.
_ARCHITECTURE_CASES = [
    *[(name, {"width": 8, "input_shape": (32, 32, 3)}) for name in resnet.VARIANTS],
    ("resnet20", {}), ("resnet110", {}), ("wrn_16_4", {}), ("wrn_10_2", {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "overrides"), _ARCHITECTURE_CASES, ids=[c[0] for c in _ARCHITECTURE_CASES])
def test_architecture_and_names_with_agree_with_the_layer_names_of_the_built_model(name, overrides):
    """`architecture(name)` (from the tables) is what the built model's layer
    names show, and `names_with` finds the name again from them and the
    channels of its stem and first block."""
    model = models.build(name, num_classes=0, **overrides)
    layer_names = [layer.name for layer in model.layers if layer.weights]
    found = naming.architecture_of(layer_names)
    assert models.architecture(name) == found
    stems = [n for n in layer_names if n.startswith(naming.STEM) and n.endswith("_conv")]
    stem_channels = model.get_layer(stems[-1]).kernel.shape[-1]
    stage_channels = model.get_layer("conv2_block1_1_conv").kernel.shape[-1]
    assert models.names_with(found, stem_channels=stem_channels, stage_channels=stage_channels) == [name]
    assert name in models.names_with(found) or name.startswith("wrn_")


def test_names_with_an_unknown_wide_resnet_width_names_its_depth():
    assert models.names_with(models.architecture("wrn_16_4")) == ["wrn_16_<k>"]
    assert models.names_with(models.architecture("resnet50")) == ["resnet50", "wide_resnet50_2"]
