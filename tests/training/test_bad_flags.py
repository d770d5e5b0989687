"""scripts/train.py rejects invalid flags at start-up, before building or
writing anything, with a message naming the flag and what is valid.

The cases run as concurrent subprocesses (each one's time is mostly the
import of TensorFlow). The library-level check of an unprepared dataset is
tests/data/test_data_errors.py; here the script's handling of it.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
# CPU seconds of a process: the cases run concurrently, so their wall time
# says little. Start-up (importing TensorFlow) takes about 8 CPU seconds
# here; what happens after it must be quick. That nothing was built or
# loaded shows in the empty model_dir.
CPU_SECONDS = 30

# name: (flags, exit status, what stderr must contain)
CASES = {
    "mixed_precision": (["--mixed_precision=float8"], 1, ["--mixed_precision=float8", "float16|bfloat16"]),
    "norm": (["--norm=group"], 1, ["--norm=group", "batch|layer|skipinit|none"]),
    "model": (["--model=resnet21"], 1, ["Unknown model 'resnet21'", "wrn_<n>_<k>", "Trains a model of the normzoo zoo"]),
    "learning_rate": (["--learning_rate=inf"], 1, ["learning_rate must be positive and finite"]),
    "sync_bn_without_batch_norm": (["--sync_bn", "--norm=layer"], 1, ["sync_bn applies to norm='batch' only"]),
    "unprepared_dataset": (["--dataset=cifar10"], 2, ["not prepared", "--data_dir=", "tfds build cifar10"]),
}


def _environment():
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return environment


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, free_ports_module):
    """{case: (exit status, stderr, seconds, files written)} for CASES and for
    the two workers of a MultiWorkerMirroredStrategy run whose batch does
    not divide over its 2 replicas."""
    root = tmp_path_factory.mktemp("flags")
    data_dir = root / "tfds"  # empty: no dataset is prepared there
    runs = {}
    for name, (flags, _, _) in CASES.items():
        runs[name] = (
            [sys.executable, str(SCRIPT), *flags, f"--model_dir={root / name}", f"--data_dir={data_dir}"],
            _environment(),
            root / name,
        )
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports_module(2)]}
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        runs[f"batch_over_replicas_{index}"] = (
            [sys.executable, str(SCRIPT), "--strategy=multi_worker", "--batch_size=15",
             f"--model_dir={root / 'multi'}", f"--data_dir={data_dir}"],
            dict(_environment(), TF_CONFIG=json.dumps(config)),
            root / "multi",
        )
    processes = {}
    for name, (command, env, _) in runs.items():
        stderr = open(root / f"{name}.stderr", "w+")  # noqa: SIM115
        processes[name] = (subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr), stderr)
    results = {}
    deadline = time.monotonic() + 10 * CPU_SECONDS
    try:
        for name, (process, stderr) in processes.items():
            # os.wait4 (not Popen.wait) to get the process's own CPU time.
            while not (waited := os.wait4(process.pid, os.WNOHANG))[0]:
                assert time.monotonic() < deadline, f"{name} still runs"
                time.sleep(0.2)
            _, status, usage = waited
            process.returncode = os.waitstatus_to_exitcode(status)
            stderr.seek(0)
            files = sorted(p.name for p in runs[name][2].rglob("*")) if runs[name][2].exists() else []
            results[name] = (process.returncode, stderr.read(), usage.ru_utime + usage.ru_stime, files)
    finally:
        for process, stderr in processes.values():
            if process.returncode is None:
                process.kill()
                os.waitpid(process.pid, 0)
                process.returncode = -9
            stderr.close()
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_an_invalid_flag_is_refused_at_start_up_naming_it(outcomes, case):
    _, status, expected = CASES[case]
    returncode, stderr, seconds, files = outcomes[case]
    assert returncode == status, stderr[-3000:]
    for text in expected:
        assert text in stderr, f"{text!r} not in:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert files == [], f"wrote {files}"
    assert seconds < CPU_SECONDS


@pytest.mark.parametrize("worker", [0, 1])
def test_a_batch_that_does_not_divide_over_the_replicas_is_refused(outcomes, worker):
    returncode, stderr, seconds, files = outcomes[f"batch_over_replicas_{worker}"]
    assert returncode == 1, stderr[-3000:]
    assert "batch_size=15 does not divide over 2 replicas; use a multiple of 2" in stderr
    assert "Traceback" not in stderr
    assert files == []
    assert seconds < CPU_SECONDS
