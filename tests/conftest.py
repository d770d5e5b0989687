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

# Under Keras' JAX backend the CPU shows as two devices, set before JAX
# starts (as TensorFlow's two logical CPUs below), so that
# keras.distribution.DataParallel runs on 2 devices (tests/jax/
# test_data_parallel.py). It changes nothing on a GPU, and single-device
# code runs on the first one.
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2"]
    ).strip()

import keras  # noqa: E402

NUM_LOGICAL_CPUS = 2

# Under another Keras backend (tests/test_backends.py runs the backend-agnostic
# tests under JAX in a process of their own) TensorFlow is not needed.
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # tests/jax/ and tests/torch/ run in a JAX and a PyTorch process of
    # their own (tests/test_backends.py).
    collect_ignore = ["jax", "torch"]

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
    "tests/lab/test_benchmark_script.py",
)


# The slow rest of the suite, marked `large` (keras-hub's convention): the
# plain `python -m pytest` skips it and runs in under 10 minutes on 2 cores
# while touching every package; `--run_large` runs it too. Node ids (or
# their beginnings) of: full backend parity, the benchmark and experiment
# scripts, fault injection, the soak, multi-process and XLA-distributed
# runs, every script's --help and flag errors (one script run stays fast:
# test_finetune's), and the biggest reference models.
LARGE = (
    "tests/test_backends.py",
    "tests/test_upstream.py",
    "tests/scripts/",
    "tests/test_commands.py::test_a_command_and_its_script_give_the_same_usage_error",
    "tests/test_packaging.py::test_an_installed_wheel_runs_its_commands_from_another_directory",
    # The lab: the measuring apparatus, its scripts and experiments.
    "tests/lab/",
    "tests/data/test_fashion_mnist.py::test_every_example_of_the_pipeline_is_the_files_example",
    "tests/checkpoints/test_shipped.py::test_a_fashion_mnist_checkpoint_reaches_its_recorded_test_accuracy",
    "tests/test_commands.py::test_an_unknown_command_is_a_usage_error",
    "tests/checkpoints/test_checksums.py::test_publish_checkpoint_ships_checksummed_files_only",
    "tests/models/test_saving.py::test_the_docs_quote_what_keras_says_when_normzoo_was_not_imported",
    "tests/test_bn_convert.py::test_converted_application_computes_what_keras_computes[ResNet50]",
    "tests/checkpoints/test_torch_weight_mapping.py::test_every_tensor_of_the_state_dict_has_its_variable[resnet101]",
    "tests/training/test_faults.py",
    "tests/training/test_bad_flags.py",
    "tests/training/test_multi_worker.py",
    "tests/training/test_multi_worker_statistics.py",
    "tests/training/test_resume_distributed.py",
    "tests/training/test_deterministic.py",
    "tests/training/test_finetune_torch.py",
    "tests/training/test_run_times.py::test_a_resumed_run_reports_its_own_first_step",
    "tests/training/test_finetune.py::test_resuming_an_interrupted_finetune",
    "tests/training/test_loop.py::test_mirrored_run_equals_single_device_run_on_the_same_global_batches",
    "tests/training/test_loop.py::test_xla_whole_step_is_compiled_and_equals_the_unjitted_run",
    "tests/checkpoints/test_torch_weight_mapping.py::test_every_tensor_of_the_state_dict_has_its_variable[wide_resnet101_2]",
    "tests/checkpoints/test_torch_weight_mapping.py::test_every_tensor_of_the_state_dict_has_its_variable[resnet152]",
    "tests/models/test_param_counts.py::test_keras_layout_has_the_parameter_count_of_keras_applications[resnet101",
    "tests/checkpoints/test_keras_applications.py::test_distributed_weights_file_builds_the_keras_applications_model[resnet50v2]",
    "tests/checkpoints/test_keras_applications.py::test_distributed_notop_file_builds_the_feature_extractor[resnet50v2]",
    "tests/training/test_loop.py::test_mirrored_run_equals_single_device_run_on_the_same_global_batches[False-True]",
    *(f"tests/test_bn_convert.py::test_converted_application_computes_what_keras_computes[{name}]"
      for name in ("DenseNet121", "MobileNetV2", "EfficientNetB0", "ResNet50V2")),
    "tests/test_bn.py::test_fold_outputs_equal_the_original_model[resnet50v2]",
    "tests/models/test_jit.py::test_jit_compiled_training_step_equals_the_eager_one[resnet18]",
    "tests/models/test_param_counts.py::test_wide_resnet_1000_2_builds",
    "tests/models/test_param_counts.py::test_keras_layout_has_the_parameter_count_of_keras_applications[resnet152",
    "tests/checkpoints/test_keras_applications.py::test_distributed_weights_file_builds_the_keras_applications_model[resnet1",
    "tests/checkpoints/test_torch_weights.py::test_restored_model_computes_the_torch_models_logits[torchvision_wide_resnet",
)


def pytest_addoption(parser):
    parser.addoption(
        "--run_large", action="store_true",
        help="Also run the tests marked large: the slow rest of the suite (tests/conftest.py's LARGE).",
    )


def pytest_collection_modifyitems(config, items):
    skip_large = pytest.mark.skip(reason="large: run with --run_large")
    for item in items:
        if item.nodeid.startswith(ONEDNN_SENSITIVE):
            item.add_marker(pytest.mark.onednn)
        if item.nodeid.startswith(LARGE):
            item.add_marker(pytest.mark.large)
            if not config.getoption("--run_large"):
                item.add_marker(skip_large)


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
    `TrainConfig` (`overrides`: fields by their flag names, as
    `TrainConfig.from_flat` takes them) of WRN-10-1 (one block per stage) on native 8x8 digits, 2
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
        return TrainConfig.from_flat(**values)

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
    `backend` ("tensorflow", "jax", "torch"); asserts that it exits 0 (showing the
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
