"""P4: the cost of synchronizing BatchNorm over replicas.

normzoo's model `settings.sync_bn_model` trained with synchronized and
with unsynchronized BatchNorm, side by side, under MirroredStrategy over 2
logical CPU devices, with normzoo's `TrainStep`. Target: synchronized at
most 1.15 times the step time. Measured in a subprocess, since logical
devices must be set before TensorFlow starts.
"""

import keras
import tensorflow as tf

from normzoo import models
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks import subprocess_run
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement
from normzoo.training import TrainStep

NUM_CLASSES = 10


def measure(settings, shared):
    result = subprocess_run.call(measure_in_process, settings)
    ratio = result.pop("ratio")
    return FigureResult([measurement(
        "P4", f"step time, synchronized / unsynchronized BatchNorm, 2 replicas ({settings.sync_bn_model})",
        ratio, "ratio", "<= 1.15", **result,
    )])


def measure_in_process(settings):
    """P4's timings, in a process where TensorFlow has created no device yet."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    size, batch = settings.sync_bn_image_size, settings.sync_bn_batch_size
    images, labels = benchmarking.random_batch(batch, size, NUM_CLASSES)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
    distributed = next(iter(strategy.experimental_distribute_dataset(dataset)))
    steps = {}
    for name, synchronized in (("unsynchronized", False), ("synchronized", True)):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = models.build(settings.sync_bn_model, synchronized_bn=synchronized, input_shape=(size, size, 3))
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
            optimizer.build(model.trainable_variables)
        steps[name] = (TrainStep(model, optimizer, strategy, batch, jit_compile=False), distributed)
    times = benchmarking.compare(
        steps, rounds=settings.rounds, steps_per_round=settings.sync_bn_steps_per_round,
        warmup_steps=settings.warmup_steps,
    )
    ratio, lowest, highest = benchmarking.ratio(times, "synchronized", "unsynchronized")
    return {
        "ratio": ratio,
        "ratio_range_over_rounds": [lowest, highest],
        "synchronized_step_ms": 1e3 * times["synchronized"].median,
        "unsynchronized_step_ms": 1e3 * times["unsynchronized"].median,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch_size": batch,
        "image_size": size,
    }


def note(m):
    d = m["details"]
    return (f"{d['synchronized_step_ms']:.1f} vs {d['unsynchronized_step_ms']:.1f} ms; "
            f"rounds {d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}")


FIGURE = Figure("P4", measure, note)
