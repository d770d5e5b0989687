"""P8: what normalizing with the replicas' average moving statistics costs.

Under a strategy with several replicas an unsynchronized BatchNorm keeps a
copy of its moving statistics per replica and normalizes with their
average wherever it uses them (in inference, and in training with
`frozen_stats`), so that a sample's output does not depend on the replica
it lands on. Under MirroredStrategy every replica reads the others' copies
(no collective); elsewhere it is one all-reduce per layer and call.

The figure times, side by side in alternating rounds, normzoo's
`EvalStep` (what the training loop evaluates with; Keras' `predict` runs
the same replica function) as it is ("with") against the same step traced
with every replica reading its own copy ("without"), under MirroredStrategy
over 2 logical CPU devices, after a few training steps on shards of
different scales have made the copies differ. Target: with / without
<= 1.02. Training with batch statistics is unchanged (no collective); its
two variants trace the same graph, so their ratio (in the details) shows
the measurement's noise. The averaging alone (a function that only reads
every layer's statistics on every replica) is also timed, as an upper
bound of what it adds, and the gap between the replicas' logits of the
same samples with and without it. Measured in a subprocess, since logical
devices must be set before TensorFlow starts.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from normzoo import _keras_graph, models
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks import subprocess_run
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement
from normzoo.layers import BatchNorm
from normzoo.training import EvalStep, TrainStep

NUM_CLASSES = 10
DRIFT_STEPS = 3


def measure(settings, shared):
    result = subprocess_run.call(measure_in_process, settings)
    inference = result["inference"]
    return FigureResult([
        measurement(
            "P8",
            f"inference step time, replicas' average / own copy of the moving statistics, "
            f"2 replicas ({settings.replica_model})",
            inference["ratio"], "ratio", "<= 1.02", **result,
        ),
        measurement(
            "P8",
            f"the averaging alone, fraction of the inference step ({settings.replica_model})",
            result["averaging_only"]["added_fraction_of_inference_step"], "fraction", "<= 0.02",
            **result["averaging_only"],
        ),
    ])


@contextlib.contextmanager
def _own_copies():
    """While active, BatchNorm normalizes with each replica's own copy of the
    moving statistics (what it did before the average): functions traced
    meanwhile keep it."""
    average = BatchNorm._moving_statistics
    BatchNorm._moving_statistics = lambda layer: (layer.moving_mean, layer.moving_variance)
    try:
        yield
    finally:
        BatchNorm._moving_statistics = average


def _variant(name):
    return _own_copies() if name == "without" else contextlib.nullcontext()


def measure_in_process(settings):
    """P8's timings, in a process where TensorFlow has created no device yet."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    batch_size, size = settings.replica_batch_size, settings.replica_image_size
    images, labels = benchmarking.random_batch(batch_size, size, NUM_CLASSES)
    images = np.asarray(images)
    shard = batch_size // strategy.num_replicas_in_sync
    # Replica r trains on shard r of the global batch, scaled by r + 1.
    scales = np.repeat(1.0 + np.arange(strategy.num_replicas_in_sync), shard).astype(np.float32)

    def distributed(*arrays):
        dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
        return next(iter(strategy.experimental_distribute_dataset(dataset)))

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = models.build(settings.replica_model, input_shape=(size, size, 3))
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        optimizer.build(model.trainable_variables)

    def train_step():
        return TrainStep(model, optimizer, strategy, batch_size, jit_compile=False)

    drift, drifting = train_step(), distributed(images * scales[:, None, None, None], labels)
    for _ in range(DRIFT_STEPS):
        drift(*drifting)
    batch = distributed(images, labels)

    def compare(make_step):
        steps = {}
        for name in ("with", "without"):
            step = make_step()
            with _variant(name):  # the first call traces the step
                benchmarking.wait(step(*batch))
            steps[name] = (step, batch)
        times = benchmarking.compare(
            steps, rounds=settings.replica_rounds, steps_per_round=settings.replica_steps_per_round,
            warmup_steps=settings.warmup_steps,
        )
        ratio, lowest, highest = benchmarking.ratio(times, "with", "without")
        return {
            "ratio": ratio,
            "ratio_range_over_rounds": [lowest, highest],
            "with_ms": 1e3 * times["with"].median,
            "without_ms": 1e3 * times["without"].median,
        }

    record = {
        "replicas": strategy.num_replicas_in_sync,
        "global_batch_size": batch_size,
        "image_size": size,
        "inference": compare(lambda: EvalStep(model, strategy)),
        "training_noise": compare(train_step),
    }
    same_samples = distributed(np.concatenate([images[:shard]] * strategy.num_replicas_in_sync))[0]
    batch_norms = [layer for layer in _keras_graph.leaf_layers(model) if isinstance(layer, BatchNorm)]
    readers = {}
    for name in ("with", "without"):

        @tf.function
        def logits(x):
            return strategy.run(lambda x: model(x, training=False), args=(x,))

        @tf.function
        def read_statistics():
            per_replica = strategy.run(lambda: [layer._moving_statistics() for layer in batch_norms])
            return strategy.experimental_local_results(per_replica)

        with _variant(name):
            per_replica = [p.numpy() for p in strategy.experimental_local_results(logits(same_samples))]
            benchmarking.wait(read_statistics())
        record[f"replica_logits_gap_{name}_average"] = max(
            float(np.abs(p - per_replica[0]).max()) for p in per_replica
        )
        readers[name] = (read_statistics, ())
    times = benchmarking.compare(
        readers, rounds=settings.replica_rounds, steps_per_round=10 * settings.replica_steps_per_round,
        warmup_steps=settings.warmup_steps,
    )
    added_ms = 1e3 * (times["with"].median - times["without"].median)
    record["averaging_only"] = {
        "batch_norm_layers": len(batch_norms),
        "with_ms": 1e3 * times["with"].median,
        "without_ms": 1e3 * times["without"].median,
        "added_ms": added_ms,
        "added_fraction_of_inference_step": added_ms / record["inference"]["without_ms"],
    }
    return record


def note(m):
    d = m["details"]
    if "inference" in d:
        i, t = d["inference"], d["training_noise"]
        return (f"{i['with_ms']:.1f} vs {i['without_ms']:.1f} ms; rounds "
                f"{i['ratio_range_over_rounds'][0]:.3f}-{i['ratio_range_over_rounds'][1]:.3f}; "
                f"identical training steps {t['ratio']:.3f} (noise); replicas' logits of the same "
                f"samples differ by {d['replica_logits_gap_with_average']:.1e} "
                f"(own copies: {d['replica_logits_gap_without_average']:.1e})")
    return (f"{d['added_ms']:.2f} ms for {d['batch_norm_layers']} layers "
            f"({d['with_ms']:.2f} vs {d['without_ms']:.2f} ms)")


FIGURE = Figure("P8", measure, note)
