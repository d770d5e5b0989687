"""The training loop on the embedded digits dataset: outputs, resumption, XLA
forms, and distribution (MirroredStrategy on 2 logical CPUs) against a
single-device run on the same global batches."""

import json
import logging
import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo import data, models
from normzoo.training import ConfigError, EvalStep, TrainingDiverged, evaluate, loop, train
from normzoo.training.distribute import choose_xla_form
from normzoo.training.steps import TrainStep

def saved_weights(path):
    """Every tensor a `.weights.h5` file holds, by its path in the file
    (read with h5py, independently of Keras and normzoo)."""
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


@pytest.fixture
def steps_run(monkeypatch, caplog):
    """The optimizer steps that `train` runs, counted by wrapping `TrainStep`
    (not taken from what the loop reports); `steps_run.clear()` starts a
    new count. Also makes caplog see the loop's INFO log."""
    caplog.set_level(logging.INFO, logger="absl")
    calls = []
    run_step = TrainStep.__call__

    def counted(self, images, labels):
        calls.append(1)
        return run_step(self, images, labels)

    monkeypatch.setattr(TrainStep, "__call__", counted)
    return calls


def never_resume(monkeypatch):
    """The broken loop the resume tests must catch: it never finds its
    checkpoints and trains again from step 0. Training is deterministic, so
    it ends with the same steps, metrics and weights as a resumed run."""
    monkeypatch.setattr(tf.train, "latest_checkpoint", lambda *args, **kwargs: None)


def assert_resumed(caplog, steps_run, checkpoint, steps):
    """The last `train` (since caplog and steps_run were cleared) resumed
    from `checkpoint`, at the step in its name, and ran `steps` steps."""
    step = int(str(checkpoint).rsplit("-", 1)[1])
    expected = f"Resumed from {checkpoint} at step {step}."
    resumed = [message for message in caplog.messages if message.startswith("Resumed")]
    assert resumed == [expected], f"expected {expected!r} in the log; it has {resumed}"
    assert len(steps_run) == steps, f"{len(steps_run)} steps run, {steps} expected"


def test_rerunning_a_finished_run_trains_nothing_more(tmp_path, tiny_config, steps_run, caplog, monkeypatch):
    first = train(tiny_config(tmp_path)).metrics
    caplog.clear()
    steps_run.clear()
    second = train(tiny_config(tmp_path)).metrics
    assert_resumed(caplog, steps_run, tmp_path / "checkpoints" / "ckpt-6", steps=0)
    assert second["steps"] == first["steps"] == 6
    assert second["test_accuracy"] == first["test_accuracy"]
    # The check above fails for a loop that trains the finished run again
    # (whose steps and accuracy are the same).
    caplog.clear()
    steps_run.clear()
    with monkeypatch.context() as broken:
        never_resume(broken)
        assert train(tiny_config(tmp_path)).metrics["steps"] == 6
    with pytest.raises(AssertionError, match="expected 'Resumed from"):
        assert_resumed(caplog, steps_run, tmp_path / "checkpoints" / "ckpt-6", steps=0)


def test_resuming_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, tiny_config, steps_run, caplog):
    straight = tmp_path / "straight"
    train(tiny_config(straight))
    interrupted = tmp_path / "interrupted"
    train(tiny_config(interrupted, checkpoint_steps=2, max_checkpoints=10))
    # Pretend the run died after the checkpoint of step 4 (mid-epoch 2).
    checkpoints = interrupted / "checkpoints"
    for path in checkpoints.glob("ckpt-6.*"):
        path.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(checkpoints), str(checkpoints / "ckpt-4"))
    caplog.clear()
    steps_run.clear()
    resumed = train(tiny_config(interrupted, checkpoint_steps=2, max_checkpoints=10)).metrics
    # Two steps from the checkpoint of step 4 end where six from the start
    # do: the model, the optimizer and the data position were all restored.
    assert_resumed(caplog, steps_run, checkpoints / "ckpt-4", steps=2)
    assert resumed["steps"] == 6
    assert_same_weights(straight / "model.weights.h5", interrupted / "model.weights.h5", atol=1e-6)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config, monkeypatch):
    # Without normalization an absurd learning rate blows the activations up.
    train(tiny_config(tmp_path, epochs=1, norm="none"))
    good = saved_weights(tmp_path / "model.weights.h5")
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))

    def diverge_and_check():
        with pytest.raises(TrainingDiverged, match="last good checkpoint"):
            train(tiny_config(tmp_path, epochs=3, norm="none", learning_rate=1e30))
        assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == latest
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.isfinite(value).all(), name
        kept = saved_weights(tmp_path / "model.weights.h5")
        assert kept.keys() == good.keys()
        for name in good:
            np.testing.assert_array_equal(kept[name], good[name], err_msg=name)

    diverge_and_check()
    # The check fails for a loop that writes its weights file on the way
    # out of a diverged run (its keys are those of the good file).
    run = loop._run

    def run_then_save_weights(config, strategy, model, *args, **kwargs):
        try:
            return run(config, strategy, model, *args, **kwargs)
        except TrainingDiverged:
            model.save_weights(os.path.join(config.run.model_dir, "model.weights.h5"))
            raise

    monkeypatch.setattr(loop, "_run", run_then_save_weights)
    with pytest.raises(AssertionError, match="not equal"):
        diverge_and_check()


def test_a_run_whose_flags_json_is_older_resumes(tmp_path, tiny_config, steps_run, caplog):
    """A flags.json written before --layout and --deterministic existed, with
    a field that no longer exists (init_variables), still resumes; the run
    then records the configuration of today."""
    train(tiny_config(tmp_path, epochs=1))
    flags_path = tmp_path / "flags.json"
    record = json.loads(flags_path.read_text())
    now = dict(record["config"])
    old = {key: value for key, value in now.items() if key not in ("layout", "deterministic")}
    record["config"] = {**old, "init_variables": "all"}
    flags_path.write_text(json.dumps(record))
    caplog.clear()
    steps_run.clear()
    metrics = train(tiny_config(tmp_path, epochs=2)).metrics
    assert_resumed(caplog, steps_run, tmp_path / "checkpoints" / "ckpt-3", steps=3)
    assert metrics["steps"] == 6
    recorded = json.loads(flags_path.read_text())["config"]
    assert recorded == {**now, "epochs": 2}


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
    `config.optimization.batch_size`."""
    dataset = config.data
    info = data.info(dataset.dataset, image_size=dataset.image_size)
    model = models.build(config.model.model, num_classes=info.num_classes, input_shape=info.image_shape)
    model.load_weights(weights_path)
    batches = data.load(
        dataset.dataset, info.test_split, global_batch_size=config.optimization.batch_size,
        training=False, image_size=dataset.image_size,
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


@pytest.fixture(scope="module")
def float32_epoch(tmp_path_factory, tiny_config):
    """tiny_config's first epoch in float32: its metrics and weights file."""
    model_dir = tmp_path_factory.mktemp("float32")
    metrics = train(tiny_config(model_dir, epochs=1)).metrics
    return metrics, model_dir / "model.weights.h5"


# One epoch (three steps) in half precision follows the float32 run. Measured
# here: the epoch's train loss differs from float32's by 6e-5 relative
# (float16) and 1.4e-3 (bfloat16), the final weights by 0.070 and 0.155 (L2
# norm over every tensor of the weights file). A run whose half-precision
# updates are all dropped differs by 2.5e-2 in loss and 0.77 in weights: the
# tolerances sit between the two.


def assert_loss_tracks_float32_run(metrics, float32_epoch):
    expected = float32_epoch[0]["history"][-1]["train_loss"]
    np.testing.assert_allclose(metrics["history"][-1]["train_loss"], expected, rtol=6e-3)


def assert_weights_track_float32_run(weights_path, float32_epoch):
    ours, theirs = saved_weights(weights_path), saved_weights(float32_epoch[1])
    assert ours.keys() == theirs.keys()
    distance = np.sqrt(sum(np.sum((ours[name] - theirs[name]) ** 2) for name in ours))
    assert distance < 0.35, f"the weights are {distance:.3g} (L2) from the float32 run's"


@pytest.mark.parametrize("mixed_precision", ["float16", "bfloat16"])
def test_mixed_precision_run_keeps_float32_variables_and_tracks_the_float32_run(
    tmp_path, mixed_precision, tiny_config, float32_epoch
):
    result = train(tiny_config(tmp_path, epochs=1, mixed_precision=mixed_precision))
    for variable in result.model.variables:
        assert variable.dtype == "float32", variable.path
    assert any("moving_mean" in v.path for v in result.model.variables)
    assert np.isfinite(result.metrics["history"][-1]["train_loss"])
    assert_loss_tracks_float32_run(result.metrics, float32_epoch)
    assert_weights_track_float32_run(tmp_path / "model.weights.h5", float32_epoch)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run


def test_the_mixed_precision_check_fails_for_a_run_that_drops_its_updates(
    tmp_path, tiny_config, float32_epoch, monkeypatch
):
    forward_backward = TrainStep._forward_backward

    def zero_gradients(self, images, labels):
        metrics, gradients = forward_backward(self, images, labels)
        return metrics, [tf.zeros_like(gradient) for gradient in gradients]

    monkeypatch.setattr(TrainStep, "_forward_backward", zero_gradients)
    metrics = train(tiny_config(tmp_path, epochs=1, mixed_precision="float16")).metrics
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_loss_tracks_float32_run(metrics, float32_epoch)
    with pytest.raises(AssertionError, match="from the float32 run's"):
        assert_weights_track_float32_run(tmp_path / "model.weights.h5", float32_epoch)
