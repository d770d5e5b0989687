"""What normalizing with the replicas' average moving statistics costs.

Under a strategy with several replicas, an unsynchronized BatchNorm keeps a
copy of its moving statistics per replica and normalizes with their average
(one all-reduce per layer and call) wherever it uses them: in inference,
and in training with `frozen_stats=True`. Training with batch statistics
is unchanged (no collective). `measure` times, side by side in alternating
rounds, each step traced as it is now ("with") against the same step
traced with every replica reading its own copy ("without", what BatchNorm
did before), on one model:

- inference: `normzoo.training.EvalStep`, what the training loop evaluates
  with (Keras' `predict`/`evaluate` run the same replica function);
- training: `normzoo.training.TrainStep` with batch statistics, whose two
  variants trace the same graph: its ratio is the measurement's noise;
- fine-tuning: `TrainStep` with every BatchNorm frozen (`frozen_stats`).

On a shared machine these ratios carry a few percent of noise (the
"training" ratio shows how much). So it also times the averaging alone:
a function that only reads every BatchNorm's moving statistics on every
replica, with and without the average (and with the all-reduce that
serves where the replicas' copies are not all in this process, e.g.
MultiWorkerMirroredStrategy); the difference, an upper bound of
what the average adds to a step (in a step the collectives depend on no
layer and overlap the computation), is reported as a fraction of the
inference step.

It also times the first call of fresh inference steps (tracing, graph
optimization, collective set-up), alternating the two variants, and
reports how far apart the two replicas' logits of the same samples are
with and without the average.

Run it in a fresh process (it makes 2 logical CPU devices, which must
happen before TensorFlow creates any):

    PYTHONPATH=. python scripts/results/replica_statistics.py

It writes `replica_statistics.json` beside itself. `measure` is a plain
function returning a plain record, for scripts/benchmark.py to adopt.
"""

import contextlib
import json
import os
import statistics
import sys
import time

NUM_CLASSES = 10


def two_logical_cpus():
    """Splits the CPU into 2 logical devices; returns their names."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return ["/cpu:0", "/cpu:1"]


@contextlib.contextmanager
def _own_copies():
    """While active, BatchNorm normalizes with each replica's own copy of the
    moving statistics (the behaviour before the average): functions traced
    meanwhile keep it."""
    from normzoo.layers import BatchNorm

    def own_copy(layer):
        return layer.moving_mean, layer.moving_variance

    average = BatchNorm._moving_statistics
    BatchNorm._moving_statistics = own_copy
    try:
        yield
    finally:
        BatchNorm._moving_statistics = average


@contextlib.contextmanager
def _all_reduce():
    """While active, the average is always one all-reduce, as where the
    replicas' copies are not all in this process (other workers)."""
    from normzoo.layers import _distributed_moments

    replica_mean = _distributed_moments.replica_mean
    _distributed_moments.replica_mean = _distributed_moments._all_reduce_mean
    try:
        yield
    finally:
        _distributed_moments.replica_mean = replica_mean


def _variant(name):
    variants = {"with": contextlib.nullcontext, "without": _own_copies, "all_reduce": _all_reduce}
    return variants[name]()


def _tracing_count(step):
    return step._function.experimental_get_tracing_count()


def measure(
    strategy,
    *,
    model_name="resnet20",
    batch_size=64,
    image_size=32,
    drift_steps=3,
    inference_rounds=41,
    inference_steps_per_round=3,
    averaging_rounds=21,
    averaging_steps_per_round=50,
    training_rounds=15,
    training_steps_per_round=1,
    first_call_pairs=3,
):
    """Step times with / without the replicas' average of the moving
    statistics, under `strategy` (several replicas).

    The model (unsynchronized BatchNorm) is first trained `drift_steps`
    steps on batches whose replicas' shards differ in scale, so that the
    replicas' copies of the statistics differ. Returns a dict holding:

    - for "inference", "training" and "frozen_stats_training": the ratio of
      the median step times (with / without), the median and the range of
      the per-round ratios, and both medians in ms;
    - for "averaging_only": both medians, that of the all-reduce used where
      the copies are not all in this process, and the difference with /
      without in ms and as a fraction of the inference step (without);
    - for "inference_first_call": the median first call of fresh inference
      steps of each variant, in seconds;
    - the largest difference between the replicas' logits of the same
      samples, with and without the average.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from normzoo import benchmarking, bn, models
    from normzoo.layers import BatchNorm
    from normzoo.training import EvalStep, TrainStep

    replicas = strategy.num_replicas_in_sync
    images, labels = benchmarking.random_batch(batch_size, image_size, NUM_CLASSES)
    images = np.asarray(images)
    # Replica r gets shard r of the global batch; each is scaled differently.
    shard = batch_size // replicas
    scales = np.repeat(1.0 + np.arange(replicas), shard).astype(np.float32)

    def distributed(*arrays):
        dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
        return next(iter(strategy.experimental_distribute_dataset(dataset)))

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = models.build(model_name, input_shape=(image_size, image_size, 3))
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        optimizer.build(model.trainable_variables)
    drift = TrainStep(model, optimizer, strategy, batch_size, jit_compile=False)
    drifting = distributed(images * scales[:, None, None, None], labels)
    for _ in range(drift_steps):
        drift(*drifting)

    record = {
        "model": model_name,
        "replicas": replicas,
        "global_batch_size": batch_size,
        "image_size": image_size,
    }
    # The same samples on every replica: do their logits agree?
    same_samples = distributed(np.concatenate([images[:shard]] * replicas))[0]
    for name in ("with", "without"):

        @tf.function
        def logits(x):
            return strategy.run(lambda x: model(x, training=False), args=(x,))

        with _variant(name):
            per_replica = [p.numpy() for p in strategy.experimental_local_results(logits(same_samples))]
        record[f"replica_logits_gap_{name}_average"] = max(
            float(np.abs(p - per_replica[0]).max()) for p in per_replica
        )

    batch = distributed(images, labels)

    def compare(make_step, rounds, steps_per_round):
        steps = {}
        for name in ("with", "without"):
            step = make_step()
            with _variant(name):  # the first call traces the step
                benchmarking.wait(step(*batch))
            steps[name] = (step, batch)
        times = benchmarking.compare(steps, rounds=rounds, steps_per_round=steps_per_round)
        for name, (step, _) in steps.items():
            # A second trace would have left the variant's context.
            assert _tracing_count(step) == 1, f"{name}: traced {_tracing_count(step)} times"
        ratio, lowest, highest = benchmarking.ratio(times, "with", "without")
        # Each round's pair ran back to back: noise that lasts longer than a
        # round reaches both alike, and this median leaves it out.
        round_ratios = [a / b for a, b in zip(times["with"].samples, times["without"].samples)]
        return {
            "ratio": ratio,
            "median_of_round_ratios": statistics.median(round_ratios),
            "ratio_range_over_rounds": [lowest, highest],
            "with_ms": 1e3 * times["with"].median,
            "without_ms": 1e3 * times["without"].median,
            "rounds": rounds,
            "steps_per_round": steps_per_round,
        }

    def train_step():
        return TrainStep(model, optimizer, strategy, batch_size, jit_compile=False)

    record["inference"] = compare(
        lambda: EvalStep(model, strategy), inference_rounds, inference_steps_per_round
    )
    batch_norms = [layer for layer in models.leaf_layers(model) if isinstance(layer, BatchNorm)]
    steps = {}
    for name in ("with", "without", "all_reduce"):

        @tf.function
        def read_statistics():
            per_replica = strategy.run(lambda: [layer._moving_statistics() for layer in batch_norms])
            return strategy.experimental_local_results(per_replica)

        with _variant(name):
            benchmarking.wait(read_statistics())
        steps[name] = (read_statistics, ())
    times = benchmarking.compare(
        steps, rounds=averaging_rounds, steps_per_round=averaging_steps_per_round
    )
    added_ms = 1e3 * (times["with"].median - times["without"].median)
    record["averaging_only"] = {
        "batch_norm_layers": len(batch_norms),
        "with_ms": 1e3 * times["with"].median,
        "without_ms": 1e3 * times["without"].median,
        "all_reduce_ms": 1e3 * times["all_reduce"].median,
        "added_ms": added_ms,
        "added_fraction_of_inference_step": added_ms / record["inference"]["without_ms"],
        "rounds": averaging_rounds,
        "steps_per_round": averaging_steps_per_round,
    }
    first_calls = {"with": [], "without": []}
    for pair in range(first_call_pairs):
        for name in ("with", "without") if pair % 2 == 0 else ("without", "with"):
            step = EvalStep(model, strategy)
            with _variant(name):
                start = time.perf_counter()
                benchmarking.wait(step(*batch))
                first_calls[name].append(time.perf_counter() - start)
    record["inference_first_call"] = {
        f"{name}_s": statistics.median(seconds) for name, seconds in first_calls.items()
    }
    record["training"] = compare(train_step, training_rounds, training_steps_per_round)
    bn.freeze(model)
    record["frozen_stats_training"] = compare(train_step, training_rounds, training_steps_per_round)
    return record


def main():
    devices = two_logical_cpus()
    import tensorflow as tf

    from normzoo import benchmarking

    strategy = tf.distribute.MirroredStrategy(devices)
    started = time.time()
    record = measure(strategy)
    record["seconds"] = time.time() - started
    record["machine"] = benchmarking.machine()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "replica_statistics.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=str)
    json.dump(record, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    main()
