"""Runs scripts/train.py, optionally killing itself with SIGKILL inside a
checkpoint write (for tests/training/test_faults.py), optionally on
several logical CPU devices (for --strategy=mirrored in
tests/training/test_deterministic.py); not a test module.

    NORMZOO_KILL_IN_CHECKPOINT=<point>:<n> python fault_driver.py --flags...
    NORMZOO_LOGICAL_CPUS=2 python fault_driver.py --strategy=mirrored --flags...

kills the process in the n-th checkpoint write, at `point`:

- "before_merge": the tensors are written to the temporary `ckpt-N_temp/`
  files, the checkpoint's own `.index`/`.data` files are not yet there;
- "before_state": the checkpoint's files are complete, the `checkpoint`
  state file does not list it yet.

The hooks wrap two TensorFlow functions that `tf.train.CheckpointManager.save`
calls in that order, so that the kill lands at the same moment in every run.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management, functional_saver

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"


def _kill_on_call(module, name, calls):
    original = getattr(module, name)
    count = 0

    def wrapper(*args, **kwargs):
        nonlocal count
        count += 1
        if count == calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def main():
    logical_cpus = int(os.environ.get("NORMZOO_LOGICAL_CPUS", "1"))
    if logical_cpus > 1:  # before TensorFlow starts
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    fault = os.environ.get("NORMZOO_KILL_IN_CHECKPOINT")
    if fault:
        point, calls = fault.split(":")
        if point == "before_merge":
            _kill_on_call(functional_saver.gen_io_ops, "merge_v2_checkpoints", int(calls))
        elif point == "before_state":
            _kill_on_call(checkpoint_management, "update_checkpoint_state_internal", int(calls))
        else:
            raise ValueError(f"Unknown kill point {point!r}")
    sys.argv = [str(SCRIPT), *sys.argv[1:]]
    sys.path.insert(0, str(SCRIPT.parent))  # as `python scripts/train.py` has it (scripts/_app.py)
    runpy.run_path(str(SCRIPT), run_name="__main__")


if __name__ == "__main__":
    main()
