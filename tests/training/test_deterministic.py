"""--deterministic: two runs of the same command give bit-identical
weights, optimizer state and metrics, on one device and under
MirroredStrategy over 2 logical CPUs.

The runs (scripts/train.py through fault_driver.py, which sets up the
logical CPUs) start together on the machine's cores, so each repetition
meets another load: what it computes must not feel it. A run with another
seed shows that the comparison sees a difference. (On the 2-core AVX-512
CPU of 2026-12-06 the runs also repeated without --deterministic; the flag
matters where TensorFlow has non-deterministic kernels, e.g. on GPUs. A
run that ignores its seed, the broken variant tried, fails these tests.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import normzoo.data
from normzoo import runtime

DRIVER = Path(__file__).resolve().parent / "fault_driver.py"
FLAGS = [
    "--model=wrn_10_1", "--image_size=0", "--batch_size=16", "--epochs=2", "--steps_per_epoch=4",
    "--learning_rate=0.05",
]  # fmt: skip
# What metrics.json records of the training itself (the rest are times).
RECORDED = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate")
RUNS = {
    # name: (logical CPUs, extra flags)
    "one_device": (1, ["--deterministic"]),
    "mirrored": (2, ["--deterministic", "--strategy=mirrored"]),
}
OTHER_SEED = ["--deterministic", "--seed=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(name, repetition): model_dir} of two repetitions of each of RUNS
    and one run with another seed, all started together."""
    root = tmp_path_factory.mktemp("deterministic")
    data_dir = root / "tfds"
    normzoo.data.prepared_builder("digits", data_dir=data_dir)
    starts = [(name, repetition, cpus, extra) for name, (cpus, extra) in RUNS.items() for repetition in (0, 1)]
    processes = {}
    for name, repetition, cpus, extra in [*starts, ("other_seed", 0, 1, OTHER_SEED)]:
        model_dir = root / f"{name}_{repetition}"
        log = open(root / f"{name}_{repetition}.log", "w")  # noqa: SIM115
        command = [sys.executable, str(DRIVER), *FLAGS, *extra, f"--model_dir={model_dir}",
                   f"--data_dir={data_dir}"]
        environment = {**os.environ, "NORMZOO_LOGICAL_CPUS": str(cpus), "TF_CPP_MIN_LOG_LEVEL": "2"}
        processes[name, repetition] = (
            subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT),
            log, model_dir,
        )
    for (name, repetition), (process, log, _) in processes.items():
        returncode = process.wait(timeout=900)
        log.close()
        assert returncode == 0, (root / f"{name}_{repetition}.log").read_text()[-3000:]
    return {key: model_dir for key, (_, _, model_dir) in processes.items()}


def _state(model_dir):
    """Every tensor of the run's last checkpoint (model and optimizer)."""
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _metrics(model_dir):
    metrics = json.loads((model_dir / "metrics.json").read_text())
    history = [{key: record[key] for key in RECORDED} for record in metrics["history"]]
    return {"history": history, "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}


@pytest.mark.parametrize("name", ["one_device", "mirrored"])
def test_two_runs_of_the_same_command_are_bit_identical(runs, name):
    first, second = runs[name, 0], runs[name, 1]
    recorded = json.loads((first / "flags.json").read_text())
    assert recorded["config"]["deterministic"] is True
    assert recorded["environment"]["num_replicas"] == RUNS[name][0]
    state, again = _state(first), _state(second)
    assert state.keys() == again.keys()
    assert any(key.startswith("optimizer/") and "iterations" not in key for key in state)
    for key, value in state.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    assert _metrics(second) == _metrics(first)
    assert len(_metrics(first)["history"]) == 2


def test_a_run_with_another_seed_differs(runs):
    """The comparison above can see a difference."""
    state, other = _state(runs["one_device", 0]), _state(runs["other_seed", 0])
    assert any(not np.array_equal(state[key], other[key]) for key in state)


def test_deterministic_ops_hold_for_the_span_of_the_context_only():
    from tensorflow.python.framework import config  # the setting's only reader (TF 2.21)

    assert not config.is_op_determinism_enabled()
    with runtime.deterministic_ops():
        assert config.is_op_determinism_enabled()
        with runtime.deterministic_ops(False):
            assert config.is_op_determinism_enabled()  # False adds nothing, takes nothing away
    assert not config.is_op_determinism_enabled()
