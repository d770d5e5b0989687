"""Where a run's time went (metrics.json, TensorBoard, the last log line),
against clocks of the test's own around the training steps, the
evaluation steps, the checkpoint writes and the whole call."""

import collections
import json
import logging
import time

import numpy as np
import pytest
import tensorflow as tf

from normzoo.training import train
from normzoo.training.steps import EvalStep, TrainStep

PARTS = ("step_seconds", "input_wait_seconds", "eval_seconds", "checkpoint_seconds")


@pytest.fixture
def clocks(monkeypatch):
    """Seconds spent in TrainStep, EvalStep and CheckpointManager.save
    calls, by the test's clock: {"train": [...], "eval": [...], "save": [...]}
    (one duration per call)."""
    durations = collections.defaultdict(list)

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                durations[name].append(time.perf_counter() - start)

        return wrapper

    monkeypatch.setattr(TrainStep, "__call__", timed("train", TrainStep.__call__))
    monkeypatch.setattr(EvalStep, "__call__", timed("eval", EvalStep.__call__))
    monkeypatch.setattr(tf.train.CheckpointManager, "save", timed("save", tf.train.CheckpointManager.save))
    return durations


def timed_train(config):
    start = time.perf_counter()
    metrics = train(config).metrics
    return metrics, time.perf_counter() - start


def assert_parts_fit(times, wall):
    for key, value in times.items():
        if key.endswith("_second") or key.endswith("_seconds"):
            assert value is None or value >= 0, key
    parts = sum(times[key] for key in PARTS) + times.get("first_step_seconds", 0)
    assert parts <= wall


def test_recorded_times_add_up_and_agree_with_independent_clocks(tmp_path, tiny_config, clocks, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    config = tiny_config(tmp_path, checkpoint_steps=2)  # 2 epochs of 3 steps
    metrics, wall = timed_train(config)
    history, run = metrics["history"], metrics["time_this_run"]

    # Each epoch's parts fit in the epoch, and the epochs in the run.
    for record in history:
        assert_parts_fit(record, record["wall_seconds"])
    assert sum(record["wall_seconds"] for record in history) <= run["wall_seconds"] <= wall
    assert_parts_fit(run, run["wall_seconds"])

    # The first step (tracing) is reported once, apart from the others.
    steps = clocks["train"]
    assert len(steps) == 6
    assert "first_step_seconds" in history[0] and "first_step_seconds" not in history[1]
    assert run["first_step_seconds"] == history[0]["first_step_seconds"]
    assert steps[0] <= run["first_step_seconds"] <= steps[0] + 0.5
    # The step rate counts the other steps: 2 in the first epoch, 3 then.
    for record, timed_steps in zip(history, (2, 3), strict=True):
        seconds = record["step_seconds"] + record["input_wait_seconds"]
        np.testing.assert_allclose(record["steps_per_second"] * seconds, timed_steps, rtol=1e-9)
        np.testing.assert_allclose(record["examples_per_second"], record["steps_per_second"] * 16, rtol=1e-9)
    # The loop's clocks hold the calls the test timed, and for steps and
    # checkpoints little more (evaluation also reads its batches).
    for part, calls in (("step_seconds", steps[1:]), ("checkpoint_seconds", clocks["save"])):
        assert sum(calls) <= run[part] <= 1.5 * sum(calls) + 0.5, part
    assert sum(clocks["eval"]) <= run["eval_seconds"]
    assert len(clocks["save"]) == 4  # steps 2 and 4 mid-epoch, 3 and 6 at the epochs' ends
    # The last log line gives the totals.
    assert caplog.messages[-1].startswith(f"Time of this run: {run['wall_seconds']:.1f} s: 5 steps")

    # TensorBoard has the same per-epoch figures.
    events = [str(path) for path in (tmp_path / "tensorboard").iterdir()]
    scalars, texts = collections.defaultdict(dict), {}
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        for value in event.summary.value:
            array = tf.make_ndarray(value.tensor)
            if array.dtype == object:  # a text summary
                texts[value.tag, event.step] = array.item().decode()
            else:
                scalars[value.tag][event.step] = float(array)
    # The run's flags, as flags.json holds them, at its first step.
    assert list(texts) == [("flags", 0)]
    with open(tmp_path / "flags.json") as flags_file:
        assert json.loads(texts["flags", 0].strip("`\n")) == json.load(flags_file)
    for record in history:
        for key in (*PARTS, "steps_per_second", "wall_seconds"):
            np.testing.assert_allclose(scalars[key][record["step"]], record[key], rtol=1e-6)
    assert list(scalars["first_step_seconds"]) == [3]


def test_a_resumed_run_reports_its_own_first_step_and_keeps_the_earlier_records(tmp_path, tiny_config, clocks):
    first, _ = timed_train(tiny_config(tmp_path, epochs=1))
    resumed, wall = timed_train(tiny_config(tmp_path, epochs=2))
    assert resumed["history"][0] == first["history"][0]
    assert "first_step_seconds" in resumed["history"][1]
    assert len(clocks["train"]) == 6
    assert resumed["time_this_run"]["first_step_seconds"] >= clocks["train"][3]
    assert_parts_fit(resumed["time_this_run"], wall)
    # A finished run trains nothing and times no step.
    again, _ = timed_train(tiny_config(tmp_path, epochs=2))
    assert len(clocks["train"]) == 6
    assert "first_step_seconds" not in again["time_this_run"]
    assert again["time_this_run"]["step_seconds"] == 0 and again["time_this_run"]["steps_per_second"] is None
