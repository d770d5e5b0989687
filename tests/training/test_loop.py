"""The training loop on the embedded digits dataset: outputs, resumption, XLA
forms, and distribution (MirroredStrategy on 2 logical CPUs) against a
single-device run on the same global batches."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo import data, models
from normzoo.training import ConfigError, EvalStep, TrainingDiverged, evaluate, train
from normzoo.training.distribute import choose_xla_form

def saved_weights(path):
    """Every variable of a saved `.weights.h5`, in order, via a fresh model."""
    import h5py

    values = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: values.append((name, obj[()])) if hasattr(obj, "shape") else None)
    return dict(values)


def assert_same_weights(path_a, path_b, atol=0.0):
    a, b = saved_weights(path_a), saved_weights(path_b)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=0, err_msg=name)


def test_run_writes_checkpoints_metrics_flags_tensorboard_and_weights(tmp_path, tiny_config):
    result = train(tiny_config(tmp_path)).metrics
    for name in ("flags.json", "metrics.json", "model.weights.h5"):
        assert (tmp_path / name).exists(), name
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-6")
    assert os.listdir(tmp_path / "tensorboard")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 6 and len(metrics["history"]) == 2
    assert metrics["test_accuracy"] == result["test_accuracy"]
    flags = json.loads((tmp_path / "flags.json").read_text())
    assert flags["config"]["model"] == "wrn_10_1"
    assert flags["environment"]["steps_per_epoch"] == 3


def test_rerunning_a_finished_run_trains_nothing_more(tmp_path, tiny_config):
    first = train(tiny_config(tmp_path)).metrics
    second = train(tiny_config(tmp_path)).metrics
    assert second["steps"] == first["steps"] == 6
    assert second["test_accuracy"] == first["test_accuracy"]


def test_resuming_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, tiny_config):
    straight = tmp_path / "straight"
    train(tiny_config(straight))
    interrupted = tmp_path / "interrupted"
    train(tiny_config(interrupted, checkpoint_steps=2, max_checkpoints=10))
    # Pretend the run died after the checkpoint of step 4 (mid-epoch 2).
    checkpoints = interrupted / "checkpoints"
    for path in checkpoints.glob("ckpt-6.*"):
        path.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(checkpoints), str(checkpoints / "ckpt-4"))
    resumed = train(tiny_config(interrupted, checkpoint_steps=2, max_checkpoints=10)).metrics
    assert resumed["steps"] == 6
    assert_same_weights(straight / "model.weights.h5", interrupted / "model.weights.h5", atol=1e-6)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config):
    # Without normalization an absurd learning rate blows the activations up.
    train(tiny_config(tmp_path, epochs=1, norm="none"))
    good = saved_weights(tmp_path / "model.weights.h5")
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(tiny_config(tmp_path, epochs=3, norm="none", learning_rate=1e30))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == latest
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name
    assert saved_weights(tmp_path / "model.weights.h5").keys() == good.keys()


def test_resuming_with_another_model_is_refused_and_changes_nothing(tmp_path, tiny_config):
    train(tiny_config(tmp_path, epochs=1))
    before = saved_weights(tmp_path / "model.weights.h5")
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    with pytest.raises(ConfigError, match="norm='batch' there, 'none' now"):
        train(tiny_config(tmp_path, epochs=2, norm="none"))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == latest
    after = saved_weights(tmp_path / "model.weights.h5")
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_xla_whole_step_is_compiled_and_equals_the_unjitted_run(tmp_path, tiny_config):
    plain = train(tiny_config(tmp_path / "plain")).metrics
    jitted = train(tiny_config(tmp_path / "xla", jit_compile=True)).metrics
    assert "whole step" in jitted["xla"]
    instructions = int(jitted["xla"].split("HLO module of ")[1].split()[0])
    assert instructions > 100
    np.testing.assert_allclose(jitted["history"][-1]["train_loss"], plain["history"][-1]["train_loss"], rtol=1e-4)
    assert_same_weights(tmp_path / "plain" / "model.weights.h5", tmp_path / "xla" / "model.weights.h5", atol=1e-4)


def test_xla_form_is_chosen_by_strategy_and_devices(mirrored_strategy):
    mirrored = mirrored_strategy
    assert choose_xla_form(tf.distribute.get_strategy(), True) == "whole_step"
    assert choose_xla_form(tf.distribute.get_strategy(), False) == "none"
    assert choose_xla_form(mirrored, True) == "segmented"  # CPUs cannot compile collectives


@pytest.fixture(scope="module")
def single_device_weights(tmp_path_factory, tiny_config):
    """The weights file of tiny_config's run on one device (run once)."""
    model_dir = tmp_path_factory.mktemp("single")
    train(tiny_config(model_dir))
    return model_dir / "model.weights.h5"


def single_device_evaluation(config, weights_path):
    """Test loss and accuracy of the weights in `weights_path`, loaded into
    `config`'s model without a strategy, over the test split in batches of
    `config.batch_size`."""
    info = data.info(config.dataset, image_size=config.image_size)
    model = models.build(config.model, num_classes=info.num_classes, input_shape=info.image_shape)
    model.load_weights(weights_path)
    batches = data.load(
        config.dataset, info.test_split, global_batch_size=config.batch_size, training=False,
        image_size=config.image_size,
    )
    return evaluate(EvalStep(model, tf.distribute.get_strategy()), batches)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("sync_bn", [False, True])
def test_mirrored_run_equals_single_device_run_on_the_same_global_batches(
    tmp_path, sync_bn, jit_compile, mirrored_strategy, tiny_config, single_device_weights
):
    """Two replicas with synchronized BN compute exactly the single-device
    step; without sync each replica normalizes with its own half-batch, so
    only the sync run must match (the unsynchronized one is checked for
    agreement between replicas). Either way the run evaluates (EvalStep
    under the strategy) as its saved weights do on one device: without sync
    the replicas' moving statistics drift apart, and every replica
    normalizes with their average, the value saved."""
    config = tiny_config(tmp_path / "mirrored", sync_bn=sync_bn, jit_compile=jit_compile)
    result = train(config, strategy=mirrored_strategy)
    metrics = result.metrics
    if jit_compile:
        assert "forward/backward pass is compiled" in metrics["xla"]
        assert int(metrics["xla"].split("XLA ran ")[1].split()[0]) > 0
    drift = 0.0
    for variable in result.model.variables:
        copies = [np.asarray(v.numpy()) for v in getattr(variable.value, "values", [variable.value])]
        for copy in copies[1:]:
            if sync_bn or "moving" not in variable.path:
                np.testing.assert_array_equal(copy, copies[0], err_msg=variable.path)
            else:
                drift = max(drift, np.abs(copy - copies[0]).max())
    weights_path = tmp_path / "mirrored" / "model.weights.h5"
    if sync_bn:
        assert_same_weights(single_device_weights, weights_path, atol=2e-5)
    else:
        # Otherwise the replicas' own statistics would serve as well as their average.
        assert drift > 1e-2
    expected = single_device_evaluation(config, weights_path)
    assert metrics["test_accuracy"] == expected["accuracy"]
    # Float32 rounding of the loss sums; each replica's own statistics give
    # a loss off by ~1e-3 relative.
    np.testing.assert_allclose(metrics["test_loss"], expected["loss"], rtol=1e-6)


@pytest.mark.parametrize("mixed_precision", ["float16", "bfloat16"])
def test_mixed_precision_run_keeps_float32_variables_and_tracks_the_float32_run(tmp_path, mixed_precision, tiny_config):
    reference = train(tiny_config(tmp_path / "float32", epochs=1)).metrics
    result = train(tiny_config(tmp_path / mixed_precision, epochs=1, mixed_precision=mixed_precision))
    for variable in result.model.variables:
        assert variable.dtype == "float32", variable.path
    assert any("moving_mean" in v.path for v in result.model.variables)
    history, expected = result.metrics["history"][-1], reference["history"][-1]
    assert np.isfinite(history["train_loss"])
    # Three steps in half precision follow the float32 trajectory closely.
    np.testing.assert_allclose(history["train_loss"], expected["train_loss"], rtol=0.05)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
