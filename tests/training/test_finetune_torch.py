"""Fine-tuning from a torchvision `.safetensors` file: the run builds the
checkpoint's architecture (layout "torchvision", 3 input channels: the grey
digits become RGB), restores every variable, BatchNorm statistics included,
and feeds the images exactly as torchvision preprocesses them, unless
--preprocess_mode says otherwise; flags.json records what was used, and a
resumed run takes it from there.

The reference is the torchvision model itself: a resnet18 with random
weights and random BatchNorm statistics, whose loss on the digits test split
(preprocessed by torchvision's own normalization) must be the restored
model's loss before any training step, as normzoo's pipeline feeds it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
from torchvision.transforms import functional

import normzoo
from normzoo import data
from normzoo.training import train

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "finetune.py"
IMAGE_SIZE = 32
TEST_EXAMPLES = 360  # digits' test split
# Relative tolerance of the restored model's loss against torch's: float32
# sums over 360 examples in two frameworks.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def torch_checkpoints(tmp_path_factory, torch_reference):
    """{classes: (torchvision resnet18 with random weights and statistics,
    its .safetensors path)} for 10 classes (the digits') and 7."""
    directory = tmp_path_factory.mktemp("torch")
    made = {}
    for seed, classes in enumerate((10, 7)):
        torch.manual_seed(seed)
        model = torch_reference.randomized(torchvision.models.resnet18(num_classes=classes), seed)
        path = directory / f"resnet18_{classes}.safetensors"
        safetensors.torch.save_file(model.state_dict(), path)
        made[classes] = (model, path)
    return made


def _digits_test_pixels():
    """The digits test split as the loop resizes it, RGB, in 0..255 pixel
    values (inverting preprocess_mode="tf", x / 127.5 - 1), and its labels."""
    dataset = data.load(
        "digits", "test", global_batch_size=TEST_EXAMPLES, training=False,
        image_size=IMAGE_SIZE, channels=3,
    )
    ((images, labels),) = list(dataset.as_numpy_iterator())
    return (images.astype(np.float64) + 1.0) * 127.5, labels


def _torch_loss_and_accuracy(model, inputs, labels):
    with torch.no_grad():
        logits = model(inputs)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels.copy()).long())
    return float(loss), float((logits.argmax(1).numpy() == labels).mean())


def test_the_default_pipeline_feeds_the_restored_model_torchvisions_preprocessing(
    tmp_path, torch_checkpoints, tiny_config
):
    torch_model, path = torch_checkpoints[10]
    model_dir = tmp_path / "run"
    fine_tuning = dict(
        model="resnet18", image_size=IMAGE_SIZE, epochs=1, steps_per_epoch=1,
        learning_rate=0.01, bn="frozen_stats",
    )
    result = train(tiny_config(model_dir, path, **fine_tuning))

    pixels, labels = _digits_test_pixels()
    tensors = torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    transform = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    normalized = functional.normalize(tensors, mean=transform.mean, std=transform.std)
    loss, accuracy = _torch_loss_and_accuracy(torch_model, normalized, labels)
    baseline = result.initialization.test
    assert baseline["loss"] == pytest.approx(loss, rel=TOLERANCE)
    assert baseline["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    # The test can tell: [-1, 1] inputs (the former default) give a loss
    # outside the tolerance (measured: 0.66% away, 66 times the tolerance).
    other_loss, _ = _torch_loss_and_accuracy(torch_model, tensors * 2.0 - 1.0, labels)
    assert abs(other_loss - loss) > 10 * TOLERANCE * loss

    report = result.initialization.report
    assert report.complete and report.preprocess_mode == "torch"
    assert not result.initialization.new_head
    statistics = [n for n in report.restored if n.endswith(("moving_mean", "moving_variance"))]
    assert len(statistics) == 2 * sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in torch_model.modules()
    )
    config = json.loads((model_dir / "flags.json").read_text())["config"]
    assert (config["preprocess_mode"], config["channels"], config["layout"]) == (
        "torch", 3, "torchvision"
    )

    # Resuming needs neither the init checkpoint nor the flags again: the
    # architecture and inputs come from flags.json.
    moved = tmp_path / "elsewhere.safetensors"
    os.replace(path, moved)
    try:
        resumed = train(tiny_config(model_dir, path, **{**fine_tuning, "epochs": 2}))
    finally:
        os.replace(moved, path)
    assert resumed.metrics["steps"] == 2
    assert resumed.metrics["initial_test_loss"] == pytest.approx(loss, rel=TOLERANCE)


def test_finetune_script_from_safetensors_new_head_frozen_bn_and_preprocessing_flag(
    tmp_path, torch_checkpoints
):
    torch_model, path = torch_checkpoints[7]
    model_dir = tmp_path / "run"
    command = [
        sys.executable, str(SCRIPT), f"--init_checkpoint={path}", "--model=resnet18",
        "--dataset=digits", f"--image_size={IMAGE_SIZE}", "--batch_size=16", "--epochs=1",
        "--steps_per_epoch=2", "--bn=frozen", "--preprocess_mode=caffe", f"--model_dir={model_dir}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "new classifier (predictions/kernel, predictions/bias)" in completed.stdout

    config = json.loads((model_dir / "flags.json").read_text())["config"]
    assert config["preprocess_mode"] == "caffe" and config["bn"] == "frozen"
    restore_report = json.loads((model_dir / "restore_report.json").read_text())
    assert restore_report["new_head"] == ["predictions/kernel", "predictions/bias"]
    assert restore_report["report"]["preprocess_mode"] == "torch"
    assert not restore_report["report"]["missing"] and not restore_report["report"]["unexpected"]
    ignored = {name for name, _ in restore_report["report"]["ignored"]}
    assert {n for n in torch_model.state_dict() if n.endswith("num_batches_tracked")} <= ignored

    # The fine-tuned weights: BatchNorm (--bn=frozen) still holds torch's
    # values, bit for bit; the convolutions trained. Their restore report
    # says what the run fed, as recorded in its flags.json.
    trained = normzoo.build("resnet18", weights=model_dir / "model.weights.h5", layout="torchvision")
    assert trained.restore_report.preprocess_mode == "caffe"
    state = torch_model.state_dict()
    for torch_name, keras_name in [
        ("bn1", "conv1_bn"), ("layer3.1.bn2", "conv4_block2_2_bn"), ("layer4.0.downsample.1", "conv5_block1_0_bn")
    ]:
        layer = trained.get_layer(keras_name)
        for torch_weight, variable in [
            ("weight", layer.gamma), ("bias", layer.beta),
            ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance),
        ]:
            np.testing.assert_array_equal(variable.numpy(), state[f"{torch_name}.{torch_weight}"].numpy())
    kernel = trained.get_layer("conv2_block1_1_conv").kernel.numpy()
    assert not np.array_equal(kernel, state["layer1.0.conv1.weight"].numpy().transpose(2, 3, 1, 0))
