"""A run resumed mid-epoch under MirroredStrategy (2 replicas take 2
per-replica batches per step) continues with exactly the batches the
uninterrupted run saw, for either input sharding."""

import logging

import h5py
import numpy as np
import pytest
import tensorflow as tf

from normzoo.training import train


def weights(path):
    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: values.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return values


@pytest.mark.parametrize("input_sharding", ["pipeline", "global_batch"])
def test_resuming_mid_epoch_under_mirrored_reproduces_the_uninterrupted_run(
    tmp_path, tiny_config, mirrored_strategy, input_sharding, caplog
):
    caplog.set_level(logging.INFO, logger="absl")
    config = tiny_config(
        tmp_path, sync_bn=True, input_sharding=input_sharding, checkpoint_steps=2, max_checkpoints=10,
        epochs=2, steps_per_epoch=3,
    )
    train(config, strategy=mirrored_strategy)
    uninterrupted = weights(tmp_path / "model.weights.h5")
    # Pretend the run died after the checkpoint of step 4 (mid-epoch 2).
    checkpoints = tmp_path / "checkpoints"
    for path in checkpoints.glob("ckpt-6.*"):
        path.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(checkpoints), str(checkpoints / "ckpt-4"))
    caplog.clear()
    assert train(config, strategy=mirrored_strategy).metrics["steps"] == 6
    assert [m for m in caplog.messages if m.startswith("Resumed")] == [
        f"Resumed from {checkpoints / 'ckpt-4'} at step 4."
    ]
    resumed = weights(tmp_path / "model.weights.h5")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        np.testing.assert_allclose(resumed[name], uninterrupted[name], atol=1e-6, rtol=0, err_msg=name)
