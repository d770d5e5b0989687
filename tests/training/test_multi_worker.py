"""scripts/train.py under MultiWorkerMirroredStrategy: two worker processes on
127.0.0.1, XLA and synchronized BatchNorm on, against a single-device run on
the same global batches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from normzoo.models import build

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
TIMEOUT_SECONDS = 420


def train_flags(model_dir, data_dir, *extra):
    return [
        sys.executable,
        str(SCRIPT),
        "--model=wrn_10_1",
        "--image_size=0",
        "--batch_size=16",
        "--epochs=2",
        "--steps_per_epoch=3",
        "--schedule=constant",
        "--learning_rate=0.05",
        "--input_sharding=global_batch",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        *extra,
    ]


def run(commands_and_envs):
    """Runs the commands concurrently; returns their outputs, failing on any
    non-zero exit or time-out (and killing the others)."""
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command, env in commands_and_envs
    ]
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT_SECONDS)
            outputs.append(output)
            assert process.returncode == 0, output[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return outputs


def weights(path):
    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: values.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return values


def test_two_worker_processes_with_xla_and_sync_bn_equal_one_device(tmp_path, free_ports):
    data_dir = tmp_path / "tfds"
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    run([(train_flags(tmp_path / "single", data_dir), environment)])  # also prepares the data

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(environment, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = train_flags(tmp_path / "multi", data_dir, "--strategy=multi_worker", "--jit_compile", "--sync_bn")
        workers.append((command, env))
    outputs = run(workers)

    # The log names the XLA form and shows that XLA compiled clusters.
    assert "forward/backward pass is compiled" in outputs[0]
    assert int(outputs[0].split("XLA ran ")[1].split()[0]) > 0

    chief = weights(tmp_path / "multi" / "model.weights.h5")
    other = weights(tmp_path / "multi" / "workers" / "worker_1" / "model.weights.h5")
    single = weights(tmp_path / "single" / "model.weights.h5")
    assert chief.keys() == other.keys() == single.keys()
    # Every variable is saved, BatchNorm moving statistics included.
    assert len(chief) == len(build("wrn_10_1", num_classes=10, input_shape=(8, 8, 1)).variables)
    for name in chief:
        np.testing.assert_array_equal(other[name], chief[name], err_msg=name)
        np.testing.assert_allclose(chief[name], single[name], atol=2e-5, rtol=0, err_msg=name)
    metrics = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert metrics["steps"] == 6
