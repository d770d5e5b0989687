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
