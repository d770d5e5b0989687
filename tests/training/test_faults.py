"""A training run killed with SIGKILL at any moment, and restarted, finishes
with the right number of steps and a complete, uncorrupted checkpoint.

scripts/train.py (through fault_driver.py, which can kill itself inside a
checkpoint write) trains WRN-10-1 on native 8x8 digits. One run directory
is killed again and again: twice at fixed points of a checkpoint write, then
at seeded random moments (while it trains, evaluates or writes), and each
time the checkpoint the next start resumes from must restore strictly.

Under MultiWorkerMirroredStrategy a killed worker cannot rejoin a running
cluster (collectives have no elastic membership in TF 2.21): recovery is to
restart every worker, which then resume from the chief's last checkpoint.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from normzoo import checkpoints, models
from normzoo.training import TrainConfig, make_optimizer

DRIVER = Path(__file__).resolve().parent / "fault_driver.py"
EPOCHS, STEPS_PER_EPOCH, CHECKPOINT_STEPS = 3, 20, 2
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
TIMEOUT_SECONDS = 300


def _command(model_dir, *extra, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH):
    return [
        sys.executable, str(DRIVER),
        "--model=wrn_10_1", "--image_size=0", "--batch_size=16",
        f"--epochs={epochs}", f"--steps_per_epoch={steps_per_epoch}",
        f"--checkpoint_steps={CHECKPOINT_STEPS}",
        "--schedule=constant", "--learning_rate=0.05",
        f"--model_dir={model_dir}", f"--data_dir={model_dir.parent / 'tfds'}",
        *extra,
    ]


def _environment(**extra):
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "NORMZOO_KILL_IN_CHECKPOINT")}
    return dict(environment, TF_CPP_MIN_LOG_LEVEL="2", **extra)


def _start(command, environment, log):
    return subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)


def _wait(process, seconds=TIMEOUT_SECONDS):
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _latest_step(model_dir):
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _assert_latest_checkpoint_restores(model_dir):
    """The checkpoint a restart resumes from restores every model variable,
    strictly, with finite values; returns its step."""
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    if latest is None:
        return 0
    model = models.build("wrn_10_1", num_classes=10, input_shape=(8, 8, 1))
    report = checkpoints.restore(model, latest)
    assert report.complete and len(report.restored) == len(model.weights), str(report)
    step = int(latest.rsplit("-", 1)[1])
    # What a resume restores: the model and the optimizer, every value used.
    optimizer = make_optimizer(TrainConfig.from_flat(schedule="constant", learning_rate=0.05), STEPS_PER_EPOCH)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(latest).assert_consumed()
    assert int(optimizer.iterations.numpy()) == step
    return step


def _assert_finished(model_dir, total_steps, epochs):
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["steps"] == total_steps
    assert [record["epoch"] for record in metrics["history"]] == list(range(epochs))
    assert metrics["history"][-1]["step"] == total_steps
    assert _assert_latest_checkpoint_restores(model_dir) == total_steps
    # The final weights file is the final checkpoint's model.
    from_checkpoint = models.build("wrn_10_1", num_classes=10, input_shape=(8, 8, 1))
    checkpoints.restore(from_checkpoint, str(model_dir / "checkpoints"))
    from_file = models.build("wrn_10_1", num_classes=10, input_shape=(8, 8, 1))
    checkpoints.restore(from_file, model_dir / "model.weights.h5")
    for a, b in zip(from_checkpoint.weights, from_file.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def _wait_for_checkpoint(process, model_dir, step):
    """Waits until the running `process` has written the checkpoint of
    `step` (or a later one); returns `time.monotonic()` then."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while _latest_step(model_dir) < step:
        assert process.poll() is None, f"the run ended before step {step}"
        assert time.monotonic() < deadline, f"no checkpoint of step {step} in {TIMEOUT_SECONDS} s"
        time.sleep(0.005)
    return time.monotonic()


def _assert_resumed_from(log_path, model_dir, step):
    """The start whose output is in `log_path` resumed from the checkpoint
    of `step` (started afresh when `step` is 0), as its log says."""
    text = log_path.read_text()
    resumed = [line for line in text.splitlines() if line.startswith("Resumed from")]
    expected = [f"Resumed from {model_dir / 'checkpoints' / f'ckpt-{step}'} at step {step}."] if step else []
    assert resumed == expected, f"{log_path.name}: expected {expected}, found {resumed}"


def test_a_run_killed_at_random_moments_and_in_checkpoint_writes_finishes_intact(tmp_path):
    model_dir = tmp_path / "run"
    rng = random.Random(6)
    trials = []
    starts = 0

    def start(environment):
        """Starts the run again; returns the process, its log and the step
        of the checkpoint it must resume from."""
        nonlocal starts
        starts += 1
        log_path = tmp_path / f"log-{starts}.txt"
        resume_step = _latest_step(model_dir)
        with open(log_path, "w") as log:
            process = _start(_command(model_dir), environment, log)
        return process, log_path, resume_step

    # In a checkpoint write: the 2nd save (step 4) before its files exist,
    # so that ckpt-2 stays the latest; then the 3rd save of the restarted
    # run (step 8) after its files, its entry in the state file and the
    # deletion of the oldest checkpoint (3 are kept), before the state file
    # drops the deleted one: ckpt-8 is the latest, and the state file still
    # lists a ckpt-2 that is gone.
    for fault, latest in (("before_merge:2", 2), ("before_state:6", 8)):
        process, log_path, resume_step = start(_environment(NORMZOO_KILL_IN_CHECKPOINT=fault))
        assert _wait(process) == -signal.SIGKILL, log_path.read_text()[-3000:]
        _assert_resumed_from(log_path, model_dir, resume_step)
        assert _assert_latest_checkpoint_restores(model_dir) == latest
        trials.append((fault, latest))
    # At random moments of the restarted run, measured in its own progress
    # rather than in seconds (a fast machine trains many steps in a second):
    # once it has written a random checkpoint after the one it resumed from
    # (so it has resumed, and logged so), after a random share of one
    # checkpoint interval as this run takes them, and before it writes the
    # next one.
    for trial in range(5):
        if _latest_step(model_dir) > TOTAL_STEPS - 4 * CHECKPOINT_STEPS:
            break  # too near the end for a kill within the run; the last start finishes it
        process, log_path, resume_step = start(_environment())
        intervals = rng.randint(1, 2)
        first = resume_step + CHECKPOINT_STEPS  # its interval includes tracing the step
        target = first + CHECKPOINT_STEPS * intervals
        started = _wait_for_checkpoint(process, model_dir, first)
        interval = (_wait_for_checkpoint(process, model_dir, target) - started) / intervals
        kill_at = time.monotonic() + rng.uniform(0.0, 1.0) * interval
        while time.monotonic() < kill_at and _latest_step(model_dir) < target + CHECKPOINT_STEPS:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert _wait(process) == -signal.SIGKILL, f"trial {trial} ended before the kill"
        _assert_resumed_from(log_path, model_dir, resume_step)
        trials.append((f"random {target}+{kill_at - started:.2f}s", _assert_latest_checkpoint_restores(model_dir)))
    # And the last start finishes.
    process, log_path, resume_step = start(_environment())
    assert _wait(process) == 0, log_path.read_text()[-3000:]
    _assert_resumed_from(log_path, model_dir, resume_step)
    steps = [step for _, step in trials]
    assert steps == sorted(steps), trials  # a kill never loses an earlier checkpoint
    _assert_finished(model_dir, TOTAL_STEPS, EPOCHS)


def test_a_multi_worker_run_whose_worker_is_killed_completes_after_restarting_the_workers(
    tmp_path, free_ports
):
    model_dir = tmp_path / "multi"
    epochs, steps_per_epoch = 2, 10
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}

    def start_workers(log):
        workers = []
        for index in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            command = _command(
                model_dir, "--strategy=multi_worker", "--input_sharding=global_batch",
                epochs=epochs, steps_per_epoch=steps_per_epoch,
            )
            workers.append(_start(command, _environment(TF_CONFIG=json.dumps(config)), log))
        return workers

    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        chief, worker = start_workers(log)
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while _latest_step(model_dir) < 2 * CHECKPOINT_STEPS:
            assert chief.poll() is None and worker.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        assert _wait(worker) == -signal.SIGKILL
        # The chief waits in a collective for the dead worker (or fails); a
        # cluster manager restarts the whole job, as done here.
        try:
            chief.wait(timeout=10)
        except subprocess.TimeoutExpired:
            chief.send_signal(signal.SIGKILL)
            chief.wait()
        assert chief.returncode != 0
        killed_at = _assert_latest_checkpoint_restores(model_dir)
        assert 0 < killed_at < epochs * steps_per_epoch

        for process in start_workers(log):
            assert _wait(process) == 0, log_path.read_text()[-3000:]
    _assert_finished(model_dir, epochs * steps_per_epoch, epochs)
    assert f"Resumed from {model_dir / 'checkpoints' / f'ckpt-{killed_at}'}" in log_path.read_text()
