"""Test-session setup.

Two logical CPU devices are configured before TensorFlow creates any, so the
tf.distribute tests can run MirroredStrategy with 2 replicas on a machine
with one physical CPU device. Single-device code runs on the first one.
"""

import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torchvision and timm (the references of the torch-weights tests) import
# torch._dynamo, which imports triton when installed (CUDA builds of torch
# ship it); importing triton after TensorFlow segfaults (triton and
# TensorFlow each bundle LLVM; measured here with torch 2.14.1+cu130, triton
# first then TensorFlow works). The tests run torch on the CPU, where triton
# is unused: it is made unimportable, and torch then does without it.
sys.modules.setdefault("triton", None)

import keras  # noqa: E402

NUM_LOGICAL_CPUS = 2

# Under another Keras backend (tests/test_backends.py runs the backend-agnostic
# tests under JAX in a process of their own) TensorFlow is not needed.
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # tests/jax/ runs in a JAX process of its own (tests/test_backends.py).
    collect_ignore = ["jax"]

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


import pytest  # noqa: E402

LOGICAL_CPUS = [f"/cpu:{i}" for i in range(NUM_LOGICAL_CPUS)]
ROOT = pathlib.Path(__file__).resolve().parents[1]

# The tests whose kernels TensorFlow's oneDNN switch changes: the layers,
# distributed training and the benchmark script. oneDNN is on by default on
# AVX-512 CPUs and off on AVX2 ones, so `.ci/run` runs these (`-m onednn`)
# again with TF_ENABLE_ONEDNN_OPTS=0 after the whole suite ran with =1.
ONEDNN_SENSITIVE = (
    "tests/layers/",
    "tests/training/test_loop.py",
    "tests/training/test_resume_distributed.py",
    "tests/training/test_multi_worker.py",
    "tests/training/test_multi_worker_statistics.py",
    "tests/training/test_deterministic.py",
    "tests/test_benchmark_script.py",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if pathlib.Path(item.path).relative_to(ROOT).as_posix().startswith(ONEDNN_SENSITIVE):
            item.add_marker(pytest.mark.onednn)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the logical CPUs for the whole session.

    Separate MirroredStrategy objects over the same devices number their
    collectives independently, and collectives of one can then be matched
    with another's ("Collective instance ... expected type ..."): tests share
    this one instead of creating their own.
    """
    return tf.distribute.MirroredStrategy(LOGICAL_CPUS)


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_config(model_dir, init_checkpoint=None, **overrides): a
    `TrainConfig` of WRN-10-1 (one block per stage) on native 8x8 digits, 2
    epochs of 3 steps: seconds per run, for the tests of the training loop,
    fine-tuning and checkpoints."""
    from normzoo.training import TrainConfig

    def make(model_dir, init_checkpoint=None, **overrides):
        values = dict(
            model="wrn_10_1",
            dataset="digits",
            image_size=None,
            batch_size=16,
            epochs=2,
            steps_per_epoch=3,
            learning_rate=0.05,
            schedule="constant",
            model_dir=str(model_dir),
            init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
            verbose=False,
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make


@pytest.fixture(scope="session")
def torch_reference():
    """Helpers for tests whose reference is a torchvision or timm model:

    - `randomized(model, seed)`: `model` in eval mode with every BatchNorm's
      running statistics and affine terms drawn away from their initial
      values (as a trained network has them), so that each changes the
      outputs; convolutions keep torch's random initialization.
    - `logits(model, images)`: the model's outputs for channels-last NumPy
      `images`, as NumPy.

    torch is imported here, by the tests that need it only (it takes seconds).
    """
    import types

    import torch

    def randomized(model, seed=0):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0.0, 0.2, generator=generator)
                    module.running_var.uniform_(0.5, 2.0, generator=generator)
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                    module.bias.normal_(0.0, 0.2, generator=generator)
        return model.eval()

    def logits(model, images):
        with torch.no_grad():
            return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()

    return types.SimpleNamespace(randomized=randomized, logits=logits)


@pytest.fixture(scope="session")
def run_python():
    """run_python(*args, backend): runs `python *args` in a process of its
    own, from the repository root with normzoo importable and Keras on
    `backend` ("tensorflow", "jax"); asserts that it exits 0 (showing the
    end of its stderr if not) and returns its stdout."""

    def run(*args, backend):
        result = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return result.stdout

    return run
