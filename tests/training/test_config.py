"""TrainConfig: groups by concern, one field per flag under the flag's name,
flat fields in and out (the flags and flags.json), inputs resolved into a
new configuration."""

import dataclasses

import pytest

from normzoo.training import ConfigError, TrainConfig
from normzoo.training.config import INPUT_FIELDS

# The flags of scripts/train.py and scripts/finetune.py with their defaults:
# the keys and values of a default run's flags.json "config", as the flat
# TrainConfig of normzoo 0.1.0 wrote them (a contract with every model_dir
# written so far).
FLAT_DEFAULTS = {
    "model": "resnet20", "norm": "batch", "dataset": "digits", "train_split": "train",
    "data_dir": None, "image_size": 32, "batch_size": 64, "epochs": 10, "steps_per_epoch": None,
    "learning_rate": 0.1, "schedule": "cosine", "warmup_epochs": 0.0, "optimizer": "momentum",
    "weight_decay": 5e-4, "skipinit_alpha": None, "strategy": "default", "tpu": None,
    "jit_compile": False, "mixed_precision": None, "sync_bn": False, "model_dir": "runs/default",
    "input_sharding": "pipeline", "checkpoint_steps": 0, "max_checkpoints": 3, "seed": 0,
    "deterministic": False, "verbose": True, "invert_images": False, "num_classes": None,
    "init_checkpoint": None, "bn": "train", "preprocess_mode": None, "channels": None, "layout": None,
}
GROUPS = {
    "model": {"model", "norm", "layout", "skipinit_alpha", "num_classes"},
    "data": {"dataset", "data_dir", "train_split", "image_size", "channels", "preprocess_mode", "invert_images"},
    "optimization": {
        "batch_size", "epochs", "steps_per_epoch", "optimizer", "learning_rate", "schedule",
        "warmup_epochs", "weight_decay",
    },
    "distribution": {"strategy", "tpu", "sync_bn", "input_sharding", "jit_compile", "mixed_precision"},
    "finetune": {"init_checkpoint", "bn"},
    "run": {"model_dir", "checkpoint_steps", "max_checkpoints", "seed", "deterministic", "verbose"},
}


def test_the_flat_fields_are_the_flags_with_their_defaults():
    assert TrainConfig().flat() == FLAT_DEFAULTS


def test_each_field_sits_in_one_group_under_its_flag_name():
    config = TrainConfig()
    assert [field.name for field in dataclasses.fields(TrainConfig)] == list(GROUPS)
    for group, names in GROUPS.items():
        assert {field.name for field in dataclasses.fields(getattr(config, group))} == names
    assert sum(len(names) for names in GROUPS.values()) == len(FLAT_DEFAULTS)


def test_from_flat_puts_each_field_in_its_group_and_flat_gives_them_back():
    fields = {
        "model": "wrn_16_4", "norm": "skipinit", "skipinit_alpha": 0.5, "dataset": "fashion_mnist",
        "epochs": 3, "learning_rate": 0.05, "strategy": "mirrored", "jit_compile": True,
        "init_checkpoint": "a.weights.h5", "bn": "frozen", "seed": 7, "deterministic": True,
    }
    config = TrainConfig.from_flat(**fields)
    assert (config.model.model, config.model.norm, config.model.skipinit_alpha) == ("wrn_16_4", "skipinit", 0.5)
    assert config.data.dataset == "fashion_mnist"
    assert (config.optimization.epochs, config.optimization.learning_rate) == (3, 0.05)
    assert (config.distribution.strategy, config.distribution.jit_compile) == ("mirrored", True)
    assert (config.finetune.init_checkpoint, config.finetune.bn) == ("a.weights.h5", "frozen")
    assert (config.run.seed, config.run.deterministic) == (7, True)
    assert config.flat() == {**FLAT_DEFAULTS, **fields}
    assert TrainConfig.from_flat(**config.flat()) == config


def test_replace_changes_a_copy_and_a_config_never_changes():
    config = TrainConfig.from_flat(epochs=3)
    changed = config.replace(learning_rate=0.3, model_dir="elsewhere")
    assert changed.flat() == {**FLAT_DEFAULTS, "epochs": 3, "learning_rate": 0.3, "model_dir": "elsewhere"}
    assert config.flat() == {**FLAT_DEFAULTS, "epochs": 3}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optimization.epochs = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.run = changed.run


def test_a_field_that_does_not_exist_is_refused_by_name():
    # flags.json of older runs may hold fields that no longer exist: they
    # are read as records (see test_loop), never built into a config.
    with pytest.raises(TypeError, match="no field 'init_variables'.*fields .*model, norm"):
        TrainConfig.from_flat(model="resnet20", init_variables="all")
    with pytest.raises(TypeError, match="no field 'init_variables'"):
        TrainConfig().replace(init_variables="all")


def test_a_flat_field_given_for_a_group_points_to_from_flat():
    with pytest.raises(TypeError, match=r"model is a ModelConfig.*TrainConfig.from_flat\(model=...\)"):
        TrainConfig(model="resnet20")


def test_with_inputs_fills_only_the_unset_inputs_in_a_new_config():
    found = {"preprocess_mode": "torch", "channels": 3, "layout": "torchvision"}
    unset = TrainConfig.from_flat(model="resnet50")
    resolved = unset.with_inputs(**found)
    assert {name: resolved.flat()[name] for name in INPUT_FIELDS} == found
    assert unset.flat() == {**FLAT_DEFAULTS, "model": "resnet50"}
    # What the configuration sets wins over what the checkpoint says.
    given = TrainConfig.from_flat(model="resnet50", preprocess_mode="caffe", channels=1, layout="keras")
    assert given.with_inputs(**found) == given
    # Where nothing says, the inputs stay unset but preprocess_mode is "tf".
    plain = TrainConfig().with_inputs()
    assert (plain.data.preprocess_mode, plain.data.channels, plain.model.layout) == ("tf", None, None)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"optimizer": "lamb"}, "Invalid optimizer='lamb' (--optimizer); choose one of sgd, momentum"),
        ({"epochs": 0}, "epochs=0 (--epochs) must be positive and finite; pass e.g. --epochs=10"),
        ({"image_size": -1}, "image_size=-1 (--image_size) must be positive, or unset"),
        ({"warmup_epochs": -1.0}, "warmup_epochs=-1.0 (--warmup_epochs) must be >= 0 and finite"),
        ({"sync_bn": True, "norm": "layer"}, "sync_bn applies to norm='batch' only; got norm='layer'."),
        ({"bn": "frozen"}, "bn='frozen' without init_checkpoint"),
    ],
)
def test_validate_names_the_field_of_each_group_as_its_flag(fields, message):
    config = TrainConfig.from_flat(**fields)
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert message in str(caught.value)


def test_the_default_config_is_valid():
    TrainConfig().validate()
