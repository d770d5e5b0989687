"""normzoo on Keras' other backends: the backend-agnostic tests run under
JAX and under PyTorch, each in a process of its own (Keras fixes its
backend when it is first imported, so one process cannot test two)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Test files that run under any backend: they import neither TensorFlow nor
# a backend's API, and compare against NumPy (tests/references.py) or Keras'
# own layers on the same backend. tests/jax/ and tests/torch/ hold the
# backend-specific ones (jax.jit, torch.compile, gradients, cross-backend
# files).
AGNOSTIC = (
    "tests/test_bn_copies.py",
    "tests/layers/test_layer_norm.py",
    "tests/layers/test_batch_norm_arguments.py",
)


def run_suite(backend, directory):
    """Runs tests/<directory> and the backend-agnostic files under Keras'
    `backend`; asserts that all passed and none was skipped (a skip would
    mean a test did not run on that backend)."""
    result = subprocess.run(
        # --run_large: this test is the full backend parity, none skipped.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--run_large",
         f"tests/{directory}", *AGNOSTIC],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = result.stdout.strip().splitlines()[-1]
    print(f"{backend} suite:", summary)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert " passed" in summary and "skipped" not in summary, summary


def test_the_backend_agnostic_suite_passes_under_jax():
    run_suite("jax", "jax")


def test_the_backend_agnostic_suite_passes_under_torch():
    run_suite("torch", "torch")
