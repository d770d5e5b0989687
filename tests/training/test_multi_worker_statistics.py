"""Unsynchronized BatchNorm under MultiWorkerMirroredStrategy: two worker
processes on 127.0.0.1 train on different data, so each keeps its own moving
statistics; in inference both normalize with their average (one all-reduce),
as a checkpoint and a single-device copy of the weights would."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

TIMEOUT_SECONDS = 300
EPSILON = 1e-3

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    from normzoo.layers import BatchNorm

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        layer = BatchNorm(momentum=0.5, epsilon=%r)
        layer.build((None, 3))
    # Each worker's shard has its own mean and scale.
    shard = np.random.default_rng(index).normal(3.0 * index, 1.0 + index, (8, 3))
    probe = np.random.default_rng(99).normal(size=(4, 3))

    @tf.function
    def train(x):
        strategy.run(lambda x: layer(x, training=True), args=(x,))

    @tf.function
    def infer(x):
        return strategy.run(lambda x: layer(x, training=False), args=(x,))

    train(tf.constant(shard, tf.float32))
    # A Keras variable's .value is the tf.distribute variable; reading the
    # Keras variable itself gives the cross-replica average.
    local = lambda v: strategy.experimental_local_results(v.value)[0].numpy().tolist()
    outputs = strategy.experimental_local_results(infer(tf.constant(probe, tf.float32)))[0]
    record = {
        "moving_mean": local(layer.moving_mean),
        "moving_variance": local(layer.moving_variance),
        "outputs": outputs.numpy().tolist(),
        "probe": probe.tolist(),
        "read_mean": layer.moving_mean.numpy().tolist(),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(record, f)
    """
    % EPSILON
)


def test_each_worker_normalizes_with_the_average_of_the_workers_statistics(tmp_path, free_ports):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(environment, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(tmp_path / f"worker_{index}.json")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT_SECONDS)
            assert process.returncode == 0, output[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    records = [json.loads((tmp_path / f"worker_{i}.json").read_text()) for i in range(2)]

    means = np.array([r["moving_mean"] for r in records])
    variances = np.array([r["moving_variance"] for r in records])
    # The workers' own statistics differ (their shards do): the average matters.
    assert np.abs(means[0] - means[1]).min() > 0.5, means
    mean, variance = means.mean(axis=0), variances.mean(axis=0)
    # gamma 1, beta 0: the plain formula with the averaged statistics.
    expected = (np.array(records[0]["probe"]) - mean) / np.sqrt(variance + EPSILON)
    for record in records:
        np.testing.assert_allclose(record["outputs"], expected, rtol=1e-6, atol=1e-6)
        # A cross-replica read (what checkpoints save) is the same average.
        np.testing.assert_allclose(record["read_mean"], mean, rtol=1e-6, atol=1e-7)
