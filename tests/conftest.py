"""Test-session setup.

Two logical CPU devices are configured before TensorFlow creates any, so the
tf.distribute tests can run MirroredStrategy with 2 replicas on a machine
with one physical CPU device. Single-device code runs on the first one.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 2

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
