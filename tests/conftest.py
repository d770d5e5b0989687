"""Test-session setup.

Two logical CPU devices are configured before TensorFlow creates any, so the
tf.distribute tests can run MirroredStrategy with 2 replicas on a machine
with one physical CPU device. Single-device code runs on the first one.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

NUM_LOGICAL_CPUS = 2

# Under another Keras backend (tests/test_backends.py runs the backend-agnostic
# tests under JAX in a process of their own) TensorFlow is not needed.
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # tests/jax/ runs in a JAX process of its own (tests/test_backends.py).
    collect_ignore = ["jax"]

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


import pytest  # noqa: E402

LOGICAL_CPUS = [f"/cpu:{i}" for i in range(NUM_LOGICAL_CPUS)]


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the logical CPUs for the whole session.

    Separate MirroredStrategy objects over the same devices number their
    collectives independently, and collectives of one can then be matched
    with another's ("Collective instance ... expected type ..."): tests share
    this one instead of creating their own.
    """
    return tf.distribute.MirroredStrategy(LOGICAL_CPUS)


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_config(model_dir, init_checkpoint=None, **overrides): a
    `TrainConfig` of WRN-10-1 (one block per stage) on native 8x8 digits, 2
    epochs of 3 steps: seconds per run, for the tests of the training loop,
    fine-tuning and checkpoints."""
    from normzoo.training import TrainConfig

    def make(model_dir, init_checkpoint=None, **overrides):
        values = dict(
            model="wrn_10_1",
            dataset="digits",
            image_size=None,
            batch_size=16,
            epochs=2,
            steps_per_epoch=3,
            learning_rate=0.05,
            schedule="constant",
            model_dir=str(model_dir),
            init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
            verbose=False,
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make
