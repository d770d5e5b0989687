"""lab/gpu_check.py on both of its roads, KERAS_BACKEND=jax and
KERAS_BACKEND=torch, at tiny size, in a process of its own in which
TensorFlow cannot be imported (as on the GPU machine, which has none);
and its one-line refusal of any other backend."""

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from normzoo_lab import gpu_check

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "lab" / "gpu_check.py"

# Runs lab/gpu_check.py as `python lab/gpu_check.py ARGS` would, with
# TensorFlow absent: `None` in sys.modules is what Python and
# importlib.util.find_spec report for a package that is not installed
# (`import tensorflow` raises ModuleNotFoundError, find_spec returns None),
# so code that probes for TensorFlow (torch._dynamo does) sees what it sees
# there. Then it prints which tensorflow modules got loaded all the same.
RUN_WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import runpy, sys
    sys.modules["tensorflow"] = None
    sys.path.insert(0, {lab!r})
    sys.argv = [{script!r}, *sys.argv[1:]]
    try:
        runpy.run_path({script!r}, run_name="__main__")
    finally:
        loaded = [name for name, module in sys.modules.items()
                  if name.split(".")[0] == "tensorflow" and module is not None]
        print("tensorflow modules loaded:", loaded, flush=True)
    """
).format(lab=str(SCRIPT.parent), script=str(SCRIPT))

FRAMEWORK = {"jax": "jax", "torch": "torch"}
NUMERICS = {
    ("BatchNorm training, mean 1.5, std 2: outputs", "float32"),
    ("BatchNorm training, mean 1e4, std 1e-2: moving variance", "float32"),
    ("BatchNorm inference, mean 1.5, std 2", "float32"),
    ("BatchNorm gradient of x, mean 1.5, std 2", "float32"),
    ("BatchNorm gradient of gamma, mean 1e4, std 1e-2", "float32"),
    ("LayerNorm per image", "float32"),
    ("SkipInit", "float32"),
    ("BatchNorm training, mean 1.5, std 2: outputs", "mixed_bfloat16"),
    ("BatchNorm inference, mean 1.5, std 2", "mixed_bfloat16"),
    ("LayerNorm per image", "mixed_bfloat16"),
    ("SkipInit", "mixed_bfloat16"),
}


def _run(*args, backend, without_tensorflow=True):
    """(CompletedProcess, seconds) of lab/gpu_check.py ARGS under
    KERAS_BACKEND=`backend` (None: unset)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # 2 shared cores
    env.pop("KERAS_BACKEND", None)
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    command = ["-c", RUN_WITHOUT_TENSORFLOW] if without_tensorflow else [str(SCRIPT)]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_gpu_check_runs_at_tiny_size_without_tensorflow(backend, tmp_path):
    output = tmp_path / "gpu_check.json"
    result, seconds = _run("--tiny", f"--output={output}", backend=backend)
    print(f"{backend}: lab/gpu_check.py --tiny took {seconds:.0f} s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "tensorflow modules loaded: []" in result.stdout
    assert "numerics: all passed" in result.stdout
    record = json.loads(output.read_text())
    # The JSON names its road: backend, framework and its version, devices.
    assert record["backend"] == backend
    # torch.__version__ carries the build's local tag (2.14.1+cu130), its metadata not always.
    version = importlib.metadata.version(FRAMEWORK[backend]).split("+")[0]
    assert record["framework_version"].split("+")[0] == version
    assert record["compilation"] == {"jax": "jax.jit", "torch": "eager"}[backend]
    assert record["devices"] and record["tensor_device"].startswith("cpu")  # no GPU here
    assert record["machine"]["keras_backend"] == backend and record["machine"]["tensorflow"] is None
    assert record["machine"]["gpus"] == []
    names = {(check["name"], check["policy"]) for check in record["numerics"]}
    assert NUMERICS <= names
    assert all(check["passed"] for check in record["numerics"]), record["numerics"]
    assert record["passed"]
    step = record["batch_norm_step"]
    assert step["normzoo_step_ms"] > 0 and step["keras_step_ms"] > 0 and np.isfinite(step["ratio"])
    assert [(r["norm"], r["policy"]) for r in record["training"]] == [
        ("batch", "float32"), ("layer", "float32"), ("skipinit", "float32"), ("batch", "mixed_bfloat16")
    ]
    for run in record["training"]:
        assert run["images_per_second"] > 0 and np.isfinite(run["loss_after"])
        assert run["loss_after"] < run["loss_first_step"], run  # the step trains
    fold = record["fold"]
    assert fold["folded_ms"] > 0 and fold["unfolded_ms"] > 0
    assert fold["max_abs_output_difference"] <= 1e-3 * max(1.0, fold["max_abs_output"])
    assert set(record["part_seconds"]) == {"numerics", "batch_norm_step", "training", "fold"}
    assert "training_compiled" not in record


BOTH = "set KERAS_BACKEND=jax or KERAS_BACKEND=torch"


@pytest.mark.parametrize("backend", ["tensorflow", "numpy", None])
def test_another_backend_is_refused_with_one_line_naming_both(backend, tmp_path):
    result, _ = _run("--tiny", f"--output={tmp_path / 'check.json'}", backend=backend,
                     without_tensorflow=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "The GPU check runs under Keras' JAX or PyTorch backend: " + BOTH
        + f" (KERAS_BACKEND is {backend or '(unset)'!r})."
    ]
    assert not (tmp_path / "check.json").exists()


def test_the_module_refuses_another_backend_too(monkeypatch):
    monkeypatch.setattr(gpu_check.backends, "BACKEND", "tensorflow")
    with pytest.raises(RuntimeError, match=f"{BOTH} \\(this process has 'tensorflow'\\)"):
        gpu_check.run(gpu_check.TINY)


def test_torch_compile_is_a_usage_error_under_jax(tmp_path):
    result, _ = _run("--tiny", "--torch_compile", f"--output={tmp_path / 'check.json'}", backend="jax")
    assert result.returncode == 2
    assert "--torch_compile needs KERAS_BACKEND=torch." in result.stderr
    assert not (tmp_path / "check.json").exists()
