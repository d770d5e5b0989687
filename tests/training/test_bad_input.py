"""Training on bad input loses nothing: a step that makes the weights
non-finite never reaches a checkpoint, and a batch of one example trains."""

import hashlib
import json

import numpy as np
import pytest
import tensorflow as tf

from normzoo import checkpoints, models
from normzoo.training import TrainingDiverged, loop, train


# Checkpointed every step, so that every good step leaves a checkpoint behind.
EVERY_STEP = dict(epochs=1, steps_per_epoch=4, checkpoint_steps=1, max_checkpoints=10)


def file_digests(directory):
    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


class _PoisonAfter(loop.TrainStep):
    """A training step whose `poison_step`-th update leaves a NaN in one
    kernel while its loss, computed before the update, is finite: what an
    overflowing gradient does."""

    poison_step = None

    def __call__(self, images, labels):
        result = super().__call__(images, labels)
        if int(self.optimizer.iterations.numpy()) == self.poison_step:
            kernel = self.model.get_layer("predictions").kernel
            kernel.assign(tf.fill(kernel.shape, np.nan))
        return result


def test_weights_made_non_finite_by_a_step_with_finite_loss_never_reach_a_checkpoint(
    tmp_path, monkeypatch, tiny_config
):
    model_dir = tmp_path / "run"
    train(tiny_config(model_dir, **EVERY_STEP))  # 4 good steps, checkpoints 1-4
    checkpoints_dir = model_dir / "checkpoints"
    digests = file_digests(checkpoints_dir)
    latest = tf.train.latest_checkpoint(str(checkpoints_dir))
    good = models.build("wrn_10_1", num_classes=10, input_shape=(8, 8, 1))
    checkpoints.restore(good, latest)

    # Resume for a second epoch; the update of step 6 poisons the weights and
    # step 6 itself would be checkpointed (checkpoint_steps=1).
    monkeypatch.setattr(_PoisonAfter, "poison_step", 6)
    monkeypatch.setattr(loop, "TrainStep", _PoisonAfter)
    with pytest.raises(TrainingDiverged, match="predictions/kernel") as caught:
        train(tiny_config(model_dir, **{**EVERY_STEP, "epochs": 2}))
    message = str(caught.value)
    assert "at step 6" in message and "ckpt-5" in message and "--learning_rate" in message

    # Step 5 was good and is kept; nothing earlier was touched or removed.
    after = file_digests(checkpoints_dir)
    assert {k: v for k, v in after.items() if k in digests and k != "checkpoint"} == {
        k: v for k, v in digests.items() if k != "checkpoint"
    }
    assert not any(name.startswith("ckpt-6") for name in after)
    resumed_from = tf.train.latest_checkpoint(str(checkpoints_dir))
    assert resumed_from.endswith("ckpt-5")
    restored = models.build("wrn_10_1", num_classes=10, input_shape=(8, 8, 1))
    report = checkpoints.restore(restored, resumed_from)  # strict: every tensor finite
    assert report.complete
    # And ckpt-4 still holds exactly what it held.
    again = models.build("wrn_10_1", num_classes=10, input_shape=(8, 8, 1))
    checkpoints.restore(again, latest)
    for a, b in zip(again.weights, good.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_a_fine_tune_that_diverges_before_its_first_checkpoint_still_writes_its_metrics(
    tmp_path, monkeypatch, tiny_config
):
    """metrics.json then holds the baseline (the restored model's test
    accuracy), the history so far and why the run stopped; no checkpoint
    is written."""
    pretrained = train(tiny_config(tmp_path / "pretrained", epochs=1))
    init_checkpoint = tmp_path / "pretrained" / "model.weights.h5"
    # The update of step 2 poisons the classifier; step 3's loss is NaN.
    monkeypatch.setattr(_PoisonAfter, "poison_step", 2)
    monkeypatch.setattr(loop, "TrainStep", _PoisonAfter)
    model_dir = tmp_path / "finetune"
    with pytest.raises(TrainingDiverged, match="at step 3") as caught:
        train(tiny_config(model_dir, init_checkpoint, epochs=1, bn="frozen_stats"))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["stopped"] == {"reason": "diverged", "step": 3, "message": str(caught.value)}
    assert metrics["history"] == [] and metrics["steps"] == 3
    # The baseline: the pretrained model's own final test accuracy (the same
    # weights, evaluated the same way), measured before the first step.
    assert metrics["initial_test_accuracy"] == pytest.approx(pretrained.metrics["test_accuracy"])
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")) is None


def test_an_infinite_learning_rate_is_refused_before_anything_is_built(tmp_path, tiny_config):
    with pytest.raises(
        loop.ConfigError, match=r"learning_rate=inf \(--learning_rate\) must be positive and finite"
    ):
        train(tiny_config(tmp_path / "run", **{**EVERY_STEP, "learning_rate": float("inf")}))
    assert not (tmp_path / "run").exists()


def test_a_batch_of_one_example_trains_with_finite_loss_and_statistics(tmp_path, tiny_config):
    # Convolutional BatchNorm takes its statistics over the 8x8 positions of
    # the one image, so the step is well defined.
    result = train(tiny_config(tmp_path, **{**EVERY_STEP, "batch_size": 1, "checkpoint_steps": 0}))
    assert result.metrics["steps"] == 4
    assert np.isfinite(result.metrics["history"][-1]["train_loss"])
    for variable in result.model.weights:
        assert np.isfinite(variable.numpy()).all(), variable.path
