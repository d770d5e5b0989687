"""Fine-tuning from an init checkpoint: every variable restored (BatchNorm
moving statistics included), a new classifier for a new number of classes,
the BatchNorm modes, resumption,
clear errors, and scripts/finetune.py end to end.

The init checkpoint is a WRN-10-1 with a 7-class classifier and random
weights and random (non-trivial) moving statistics, saved with Keras; the
runs fine-tune it on the 10 digit classes at their native 8x8. The
checkpoint's values are read back with Keras' own `load_weights` into a
separate model: the reference every test compares against.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from normzoo import bn, data, layers, models
from normzoo.training import ConfigError, finetune, train

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "finetune.py"
CHECKPOINT_CLASSES = 7
HEAD = ("predictions/kernel", "predictions/bias")


def _wrn(num_classes, norm="batch"):
    return models.build("wrn_10_1", norm=norm, num_classes=num_classes, input_shape=(8, 8, 1))


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory):
    """A 7-class WRN-10-1 with random weights and moving statistics far
    from their initial values, saved as .weights.h5."""
    model = _wrn(CHECKPOINT_CLASSES)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        shape = variable.shape
        if variable.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif variable.path.endswith(("moving_mean", "beta", "bias")):
            value = rng.normal(0.0, 0.2, shape)
        elif variable.path.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            fan_in = np.prod(shape[:-1])
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        variable.assign(value.astype("float32"))
    path = tmp_path_factory.mktemp("init") / "pretrained.weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture(scope="module")
def reference(init_checkpoint):
    """The checkpoint's values by variable path, as Keras itself loads them."""
    model = _wrn(CHECKPOINT_CLASSES)
    model.load_weights(init_checkpoint)
    return {variable.path: variable.numpy() for variable in model.weights}


def _batch_norms(model):
    return [layer for layer in model.layers if isinstance(layer, layers.BatchNorm)]


def _values(model, suffixes):
    return {v.path: v.numpy() for v in model.weights if v.path.endswith(suffixes)}


STATISTICS = ("moving_mean", "moving_variance")
GAMMA_BETA = ("gamma", "beta")


def test_new_head_restore_equals_the_checkpoint_body_and_skips_exactly_the_head(
    init_checkpoint, reference
):
    model = _wrn(10)
    fresh_head = _values(model, ("predictions/kernel", "predictions/bias"))
    source = finetune.read_init_checkpoint(str(init_checkpoint), "batch")

    initialization = finetune.initialize(model, str(init_checkpoint), source)

    assert initialization.new_head == HEAD
    assert sorted(initialization.report.skipped) == sorted(HEAD)
    assert initialization.report.complete and initialization.audit == ()
    body = [v for v in model.weights if v.path not in HEAD]
    assert sum(v.path.endswith(STATISTICS) for v in body) == 2 * len(_batch_norms(model))
    for variable in body:
        np.testing.assert_array_equal(variable.numpy(), reference[variable.path], err_msg=variable.path)
    for path, value in _values(model, ("predictions/kernel", "predictions/bias")).items():
        np.testing.assert_array_equal(value, fresh_head[path], err_msg=path)
    assert sorted(initialization.report.restored) == sorted(v.path for v in body)


def test_frozen_stats_keeps_statistics_bit_identical_while_gamma_and_beta_train(
    tmp_path, init_checkpoint, reference, tiny_config
):
    result = train(tiny_config(tmp_path, init_checkpoint, bn="frozen_stats"))

    for path, value in _values(result.model, STATISTICS).items():
        np.testing.assert_array_equal(value, reference[path], err_msg=path)
    changed = [
        path for path, value in _values(result.model, GAMMA_BETA).items()
        if not np.array_equal(value, reference[path])
    ]
    assert len(changed) == len(_values(result.model, GAMMA_BETA))
    written = json.loads((tmp_path / "restore_report.json").read_text())
    assert written["new_head"] == list(HEAD)
    assert sorted(written["report"]["skipped"]) == sorted(HEAD)
    assert written["report"]["unrestored_statistics"] == []
    assert written["audit_after_restore"] == []
    flags = json.loads((tmp_path / "flags.json").read_text())["config"]
    assert flags["init_checkpoint"] == str(init_checkpoint) and flags["bn"] == "frozen_stats"


def test_frozen_keeps_gamma_beta_and_statistics_while_convolutions_train(
    tmp_path, init_checkpoint, reference, tiny_config
):
    result = train(tiny_config(tmp_path, init_checkpoint, bn="frozen"))

    for path, value in _values(result.model, STATISTICS + GAMMA_BETA).items():
        np.testing.assert_array_equal(value, reference[path], err_msg=path)
    kernels = _values(result.model, ("kernel",))
    assert all(not np.array_equal(value, reference[path]) for path, value in kernels.items() if path not in HEAD)


def test_recalibrated_estimates_the_statistics_on_training_batches_then_keeps_them(
    tmp_path, init_checkpoint, reference, tiny_config
):
    """bn="recalibrated": the moving statistics are those that Precise BN
    gives the checkpoint's network (loaded here by Keras) on the first
    RECALIBRATION_BATCHES training batches, and training leaves them there
    while gamma and beta learn."""
    config = tiny_config(tmp_path, init_checkpoint, bn="recalibrated")
    result = train(config)

    checkpoint_model = _wrn(CHECKPOINT_CLASSES)
    checkpoint_model.load_weights(init_checkpoint)
    dataset = config.data
    batches = data.load(
        dataset.dataset, "train", data_dir=dataset.data_dir,
        global_batch_size=config.optimization.batch_size, training=True,
        image_size=dataset.image_size, invert=dataset.invert_images, seed=config.run.seed,
    )
    bn.recalibrate(checkpoint_model, batches, num_batches=finetune.RECALIBRATION_BATCHES)
    expected = _values(checkpoint_model, STATISTICS)
    got = _values(result.model, STATISTICS)
    assert sorted(got) == sorted(expected) and got
    for path, value in got.items():
        np.testing.assert_allclose(value, expected[path], rtol=1e-5, atol=1e-6, err_msg=path)
        assert np.abs(value - reference[path]).max() > 1e-2, f"{path} kept the checkpoint's value"
    assert all(
        not np.array_equal(value, reference[path]) for path, value in _values(result.model, GAMMA_BETA).items()
    )


def test_bn_train_updates_the_restored_statistics(tmp_path, init_checkpoint, reference, tiny_config):
    result = train(tiny_config(tmp_path / "restored", init_checkpoint, bn="train"))
    # Training normalizes with batch statistics, so a run whose moving
    # statistics start from their initial values (mean 0, variance 1) takes
    # the same steps: the two moving averages differ by exactly the
    # difference of their starting points, decayed by momentum**steps
    # (measured within 3.4e-7; that difference is 0.16 or more in every
    # statistic, and 0 for a run that did not restore the statistics, which
    # "differs from the checkpoint" alone could not tell).
    unrestored_checkpoint = tmp_path / "unrestored.weights.h5"
    model = _wrn(CHECKPOINT_CLASSES)
    model.load_weights(init_checkpoint)
    for layer in _batch_norms(model):
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape))
    model.save_weights(unrestored_checkpoint)
    unrestored = train(tiny_config(tmp_path / "unrestored", unrestored_checkpoint, bn="train"))

    steps = result.metrics["steps"]
    for layer, other in zip(_batch_norms(result.model), _batch_norms(unrestored.model)):
        decay = layer.momentum**steps
        for name, initial in (("moving_mean", 0.0), ("moving_variance", 1.0)):
            variable = getattr(layer, name)
            value = variable.numpy()
            assert not np.array_equal(value, reference[variable.path]), variable.path
            np.testing.assert_allclose(
                value - getattr(other, name).numpy(),
                decay * (reference[variable.path] - initial),
                rtol=0, atol=1e-5, err_msg=variable.path,
            )
    assert bn.audit(result.model) == []


def test_resuming_an_interrupted_finetune_continues_from_its_own_checkpoint(
    tmp_path, init_checkpoint, tiny_config
):
    straight = train(tiny_config(tmp_path / "straight", init_checkpoint, bn="frozen_stats"))
    interrupted = tmp_path / "interrupted"
    config = tiny_config(interrupted, init_checkpoint, bn="frozen_stats", checkpoint_steps=2, max_checkpoints=10)
    started = train(config)
    checkpoints = interrupted / "checkpoints"
    for path in checkpoints.glob("ckpt-6.*"):
        path.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(checkpoints), str(checkpoints / "ckpt-4"))
    # Were the init checkpoint applied again, the resumed run could not even start.
    moved = tmp_path / "moved.weights.h5"
    os.replace(init_checkpoint, moved)
    try:
        resumed = train(config)
    finally:
        os.replace(moved, init_checkpoint)

    assert resumed.initialization is None
    assert resumed.metrics["steps"] == 6
    # The restored model's baseline was measured when the run started (the
    # init checkpoint is gone now); the resumed run keeps those figures.
    for figure in ("accuracy", "loss"):
        key = f"initial_test_{figure}"
        assert resumed.metrics[key] == started.metrics[key] == started.initialization.test[figure]
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6, err_msg=a.path)


def test_the_restored_models_test_accuracy_is_recorded_before_fine_tuning(tmp_path, tiny_config):
    # The shipped ResNet-20 (97.8% on the digits at 32x32): a baseline far
    # from chance, so that an evaluation of another model (fresh weights, a
    # new classifier, after a training step) could not give the same figures.
    path = Path(__file__).resolve().parents[2] / "checkpoints" / "resnet20_batch_digits.weights.h5"
    config = tiny_config(
        tmp_path, path, model="resnet20", image_size=32, bn="frozen_stats", epochs=1,
        steps_per_epoch=1, learning_rate=0.5,
    )

    result = train(config)

    # Independently: Keras' own load_weights, and a NumPy accuracy of the
    # whole test split in one call.
    model = models.build("resnet20", input_shape=(32, 32, 1))
    model.load_weights(path)
    images, labels = zip(
        *((x.numpy(), y.numpy()) for x, y in data.load("digits", "test", global_batch_size=360, training=False, image_size=32))
    )
    images, labels = np.concatenate(images), np.concatenate(labels)
    logits = model(images, training=False).numpy()
    accuracy = np.mean(np.argmax(logits, -1) == labels)
    shifted = logits - logits.max(-1, keepdims=True)
    loss = np.mean(np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(len(labels)), labels])
    assert accuracy > 0.9

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["initial_test_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert metrics["initial_test_loss"] == pytest.approx(loss, rel=1e-5)
    assert result.metrics["initial_test_accuracy"] == metrics["initial_test_accuracy"]
    written = json.loads((tmp_path / "restore_report.json").read_text())
    assert written["test_after_restore"]["accuracy"] == metrics["initial_test_accuracy"]
    # One step at a large learning rate moved the model: the final figure is another one.
    assert metrics["test_loss"] != pytest.approx(loss, rel=1e-3)


def test_a_run_without_init_checkpoint_records_no_baseline(tmp_path, tiny_config):
    metrics = train(tiny_config(tmp_path, epochs=1, steps_per_epoch=1)).metrics
    assert "initial_test_accuracy" not in metrics and "initial_test_loss" not in metrics


def test_a_missing_init_checkpoint_is_a_clear_error_and_nothing_is_trained(tmp_path, tiny_config):
    missing = tmp_path / "no_such.weights.h5"
    model_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        train(tiny_config(model_dir, missing))
    assert not model_dir.exists()


def test_a_checkpoint_of_another_norm_names_the_norm_to_pass(tmp_path, tiny_config):
    path = tmp_path / "layer_norm.weights.h5"
    _wrn(10, norm="layer").save_weights(path)
    with pytest.raises(ConfigError, match="norm='layer'.*--norm=layer"):
        train(tiny_config(tmp_path / "run", path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(norm="layer", bn="frozen_stats"), "norm='layer' has none"),
        (dict(init_checkpoint=None, bn="frozen"), "without init_checkpoint"),
        (dict(bn="frozen_statistics"), "choose one of train, frozen_stats, frozen"),
        (dict(num_classes=5), "smaller than the 10 classes"),
    ],
)
def test_invalid_finetune_configurations_are_refused(tmp_path, init_checkpoint, overrides, message, tiny_config):
    overrides = {"init_checkpoint": init_checkpoint, **overrides}
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_finetune_script_runs_end_to_end(tmp_path, init_checkpoint, reference):
    model_dir = tmp_path / "run"
    command = [
        sys.executable, str(SCRIPT),
        f"--init_checkpoint={init_checkpoint}",
        "--model=wrn_10_1", "--image_size=0", "--batch_size=16", "--epochs=1",
        "--steps_per_epoch=2", f"--model_dir={model_dir}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "new classifier (predictions/kernel, predictions/bias)" in completed.stdout

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    baseline = re.search(
        r"Restored model, before fine-tuning: test loss (\S+) accuracy (\S+)\n", completed.stdout
    )
    assert baseline, completed.stdout[-3000:]
    assert float(baseline[2]) == pytest.approx(metrics["initial_test_accuracy"], abs=5e-5)
    assert float(baseline[1]) == pytest.approx(metrics["initial_test_loss"], abs=5e-5)
    flags = json.loads((model_dir / "flags.json").read_text())
    config = flags["config"]
    assert config["bn"] == "frozen_stats" and config["init_checkpoint"] == str(init_checkpoint)
    # The scripts turn TensorFlow's oneDNN CPU kernels on unless told otherwise.
    if "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        assert flags["environment"]["onednn"] is True
    assert (model_dir / "restore_report.json").exists()
    # The script's default, frozen statistics, kept the checkpoint's.
    trained = _wrn(10)
    trained.load_weights(model_dir / "model.weights.h5")
    for path, value in _values(trained, STATISTICS).items():
        np.testing.assert_array_equal(value, reference[path], err_msg=path)
