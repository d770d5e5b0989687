"""normzoo on Keras' other backends: the backend-agnostic tests run under
JAX, in a process of their own (Keras fixes its backend when it is first
imported, so one process cannot test two)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Test files that run under any backend: they import neither TensorFlow nor
# a backend's API, and compare against NumPy (tests/references.py) or Keras'
# own layers on the same backend. tests/jax/ holds the JAX-specific ones
# (jax.jit, jax.grad, cross-backend files).
JAX_SUITE = (
    "tests/jax",
    "tests/test_bn_copies.py",
    "tests/layers/test_layer_norm.py",
    "tests/layers/test_batch_norm_arguments.py",
)


def test_the_backend_agnostic_suite_passes_under_jax():
    result = subprocess.run(
        # --run_large: this test is the full backend parity, none skipped.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--run_large", *JAX_SUITE],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = result.stdout.strip().splitlines()[-1]
    print("JAX suite:", summary)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    # A skip there would mean a test did not run on JAX.
    assert " passed" in summary and "skipped" not in summary, summary
