"""scripts/train.py and finetune.py reject invalid flags at start-up, before
building or writing anything, in one message naming the flag, the value
and the fix (exit status 2, no traceback, no flag list).

The cases run as concurrent subprocesses (each one's time is mostly the
import of TensorFlow). The library-level check of an unprepared dataset is
tests/data/test_data_errors.py; here the script's handling of it.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normzoo import checkpoints, models

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# CPU seconds of a process: the cases run concurrently, so their wall time
# says little. Start-up (importing TensorFlow) takes about 8 CPU seconds
# here; what happens after it must be quick. That nothing was built or
# loaded shows in the empty model_dir.
CPU_SECONDS = 30
USAGE_ERROR = 2
HELP_HINT = "Pass --help to see the flags of "

# name: (script, flags, exit status, what stderr must contain). Each case
# gets its own --model_dir and an empty --data_dir; "{resnet50}" is the
# path of a ResNet-50 weights file.
CASES = {
    "mixed_precision": ("train", ["--mixed_precision=float8"], 2, ["--mixed_precision=float8", "float16|bfloat16"]),
    "norm": ("train", ["--norm=group"], 2, ["--norm=group", "batch|layer|skipinit|none"]),
    "model": ("train", ["--model=resnet21"], 2, ["model='resnet21' (--model): Unknown model 'resnet21'", "wrn_<n>_<k>"]),
    "learning_rate": ("train", ["--learning_rate=inf"], 2, ["learning_rate=inf (--learning_rate) must be positive and finite"]),
    "batch_size": ("train", ["--batch_size=0"], 2, ["batch_size=0 (--batch_size) must be positive and finite; pass e.g. --batch_size=64"]),
    "layout": ("train", ["--model=resnet50v2", "--layout=torchvision"], 2, ["layout='torchvision' (--layout): Unknown layout 'torchvision' for resnet50v2; valid layouts: keras, slim"]),
    "sync_bn_without_batch_norm": ("train", ["--sync_bn", "--norm=layer"], 2, ["sync_bn applies to norm='batch' only"]),
    "unknown_dataset": ("train", ["--dataset=no_such_dataset"], 2, ["Unknown dataset 'no_such_dataset' (--dataset)", "'digits'"]),
    "model_dir_is_a_file": ("train", [], 2, ["(--model_dir) is a file", "Choose another --model_dir"]),
    "unprepared_dataset": ("train", ["--dataset=cifar10"], 2, ["not prepared", "--data_dir=", "tfds build cifar10"]),
    "finetune_of_another_architecture": (
        "finetune", ["--init_checkpoint={resnet50}"], 2,
        ["holds a resnet50 (stages conv2-conv5 of 3, 4, 6, 3 blocks, bottleneck)",
         "--model=resnet20 has stages conv2-conv4 of 3, 3, 3 blocks",
         "Pass --model=resnet50 --layout=keras."],
    ),
}
# What the file given as --model_dir holds (it must stay so).
FILE_CONTENT = b"not a directory\n"
# Lines that TensorFlow's and absl's C++ logging write to stderr: not the
# script's message.
_LOG_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog)")


def _message(stderr):
    """The lines of stderr that the script wrote itself."""
    return [line for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]


def _environment():
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return environment


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("flags")


@pytest.fixture(scope="module")
def outcomes(root, free_ports_module):
    """{case: (exit status, stderr, seconds, files written)} for CASES and for
    the two workers of a MultiWorkerMirroredStrategy run whose batch does
    not divide over its 2 replicas."""
    data_dir = root / "tfds"  # empty: no dataset is prepared there
    resnet50 = root / "resnet50.weights.h5"
    checkpoints.save_weights(models.build("resnet50", input_shape=(32, 32, 3), width=8), resnet50)
    (root / "model_dir_is_a_file").write_bytes(FILE_CONTENT)
    runs = {}
    for name, (script, flags, _, _) in CASES.items():
        flags = [flag.format(resnet50=resnet50) for flag in flags]
        runs[name] = (
            [sys.executable, str(SCRIPTS / f"{script}.py"), *flags, f"--model_dir={root / name}",
             f"--data_dir={data_dir}"],
            _environment(),
            root / name,
        )
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports_module(2)]}
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        runs[f"batch_over_replicas_{index}"] = (
            [sys.executable, str(SCRIPTS / "train.py"), "--strategy=multi_worker", "--batch_size=15",
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
def test_an_invalid_flag_is_refused_at_start_up_in_one_message_naming_it(outcomes, case):
    """Exit status 2, the reason first (a usage error: on one line, then
    only the hint at --help; no flag list), no traceback, nothing written."""
    _, _, status, expected = CASES[case]
    returncode, stderr, seconds, files = outcomes[case]
    assert returncode == status, stderr[-3000:]
    message = _message(stderr)
    assert "error" in message[0].lower() and expected[0] in message[0], stderr[-3000:]
    if case == "unprepared_dataset":  # not a usage error: the message says how to prepare it
        assert HELP_HINT not in stderr
    else:
        assert len(message) == 2 and message[1].startswith(HELP_HINT), stderr[-3000:]
    for text in expected:
        assert text in "\n".join(message), f"{text!r} not in:\n{message}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert files == [], f"wrote {files}"
    assert seconds < CPU_SECONDS


def test_a_model_dir_that_is_a_file_is_left_untouched(outcomes, root):
    returncode, _, _, _ = outcomes["model_dir_is_a_file"]
    assert returncode == USAGE_ERROR
    path = root / "model_dir_is_a_file"
    assert path.is_file() and path.read_bytes() == FILE_CONTENT


@pytest.mark.parametrize("worker", [0, 1])
def test_a_batch_that_does_not_divide_over_the_replicas_is_refused(outcomes, worker):
    returncode, stderr, seconds, files = outcomes[f"batch_over_replicas_{worker}"]
    assert returncode == USAGE_ERROR, stderr[-3000:]
    assert "batch_size=15 does not divide over 2 replicas; use a multiple of 2" in _message(stderr)[0]
    assert "Traceback" not in stderr
    assert files == []
    assert seconds < CPU_SECONDS
