"""torchvision and timm ResNets, restored from their state dicts, compute
what torchvision and timm compute.

Each reference is the torch model itself: built by torchvision or timm with
random weights and random BatchNorm statistics (eval mode), saved as
`.safetensors` and as a `torch.save` `.pth`, restored into normzoo, and
compared on the same images: logits within 1e-4 of the logit scale. The
images are 40x40, so that later stages see odd sizes (5x5, 3x3), where
padding conventions differ most (torch pads symmetrically; a strided
Keras "same" would not). resnet34 and the deeper networks (101, 152,
wide 101), the same blocks in other numbers, are checked by their weight
mapping in test_torch_weight_mapping.py.
"""

import os
import pickle

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision

import normzoo
from normzoo import checkpoints
from normzoo.checkpoints import torch_files
from tests.checkpoints import refusals

CLASSES = 7
SHAPE = (40, 40, 3)

# reference -> (normzoo model, torch constructor)
REFERENCES = {
    "torchvision_resnet18": ("resnet18", lambda: torchvision.models.resnet18(num_classes=CLASSES)),
    "torchvision_resnet50": ("resnet50", lambda: torchvision.models.resnet50(num_classes=CLASSES)),
    "timm_resnet50": ("resnet50", lambda: timm.create_model("resnet50", num_classes=CLASSES)),
    "timm_resnet50d": ("resnet50d", lambda: timm.create_model("resnet50d", num_classes=CLASSES)),
    "torchvision_wide_resnet50_2": (
        "wide_resnet50_2",
        lambda: torchvision.models.wide_resnet50_2(num_classes=CLASSES),
    ),
}


@pytest.fixture(scope="module")
def images(tools):
    return tools.images(shape=SHAPE)


@pytest.fixture(scope="module")
def references(tmp_path_factory, torch_reference, images):
    """references(key): the torch model, its state dict saved in both
    formats, and its logits for `images`; made once per key."""
    made = {}

    def make(key):
        if key not in made:
            torch.manual_seed(0)
            model = torch_reference.randomized(REFERENCES[key][1]())
            directory = tmp_path_factory.mktemp(key)
            paths = {"safetensors": directory / "model.safetensors", "pth": directory / "model.pth"}
            safetensors.torch.save_file(model.state_dict(), paths["safetensors"])
            torch.save(model.state_dict(), paths["pth"])
            made[key] = (model, paths, torch_reference.logits(model, images))
        return made[key]

    return make


@pytest.fixture(scope="module")
def built(references):
    """built(name): the normzoo model `name`, built from the safetensors file
    of the first reference of that name (detection of layout, classes and
    channels); made once per name."""
    made = {}

    def make(name):
        if name not in made:
            key = next(key for key, (model_name, _) in REFERENCES.items() if model_name == name)
            _, paths, _ = references(key)
            made[name] = normzoo.build(name, weights=paths["safetensors"], input_shape=SHAPE)
        return made[name]

    return make


def _scramble(model, seed=1):
    """Every variable of `model` set to values no checkpoint holds."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.uniform(0.1, 1.0, variable.shape).astype("float32"))


@pytest.mark.parametrize("file_format", ["safetensors", "pth"])
@pytest.mark.parametrize("key", list(REFERENCES))
def test_restored_model_computes_the_torch_models_logits(
    key, file_format, references, built, images, tools
):
    torch_model, paths, expected = references(key)
    model = built(REFERENCES[key][0])
    _scramble(model)
    report = checkpoints.restore(model, paths[file_format])

    tools.assert_same_outputs(model(images, training=False).numpy(), expected)
    assert report.complete and len(report.restored) == len(model.weights)
    assert report.format == {"safetensors": "torch_safetensors", "pth": "torch_state_dict"}[
        file_format
    ]
    # Every running statistic restored; every num_batches_tracked ignored, by name.
    state = torch_model.state_dict()
    statistics = [name for name in report.restored if name.endswith(("moving_mean", "moving_variance"))]
    assert len(statistics) == sum(name.endswith(("running_mean", "running_var")) for name in state)
    counters = {name for name in state if name.endswith("num_batches_tracked")}
    assert {name for name, _ in report.ignored} == counters
    assert report.preprocess_mode == "torch"
    # The same architecture: torch's parameters are normzoo's trainable variables.
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == sum(
        p.numel() for p in torch_model.parameters()
    )


def test_build_detects_layout_classes_and_channels_from_a_pth_file(references, images, tools):
    _, paths, expected = references("torchvision_resnet18")
    model = normzoo.build("resnet18", weights=paths["pth"])
    report = model.restore_report
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, CLASSES)
    # The "torchvision" layout: no convolution biases, epsilon 1e-5, momentum 0.9.
    assert not any(layer.use_bias for layer in model.layers if layer.name.endswith("_conv"))
    assert {(layer.epsilon, layer.momentum) for layer in model.layers if layer.name.endswith("_bn")} == {
        (1e-5, 0.9)
    }
    assert report.verified and "CRC-32" in report.verification
    assert "'torch'" in str(report)
    same = normzoo.build("resnet18", weights=paths["pth"], input_shape=SHAPE)
    tools.assert_same_outputs(same(images, training=False).numpy(), expected)


def test_the_comparison_fails_when_a_tensor_is_transposed_or_statistics_are_lost(
    tmp_path, references, built, images, tools
):
    torch_model, _, expected = references("torchvision_resnet18")
    model = built("resnet18")
    # Square kernels: a transpose keeps the shape, so only the outputs show it.
    for name, axes in [("layer1.0.conv2.weight", (1, 0, 2, 3)), ("conv1.weight", (0, 1, 3, 2))]:
        state = dict(torch_model.state_dict())
        state[name] = state[name].permute(*axes).contiguous()
        path = tmp_path / "transposed.safetensors"
        safetensors.torch.save_file(state, path)
        assert checkpoints.restore(model, path).complete
        outputs = model(images, training=False).numpy()
        assert tools.max_relative_difference(outputs, expected) > 10 * 1e-4, name
    checkpoints.restore(model, references("torchvision_resnet18")[1]["safetensors"])
    tools.assert_statistics_matter(model, images, expected, ["conv1_bn", "conv4_block2_2_bn"])


def test_a_lost_tensor_is_refused_by_name_and_the_model_is_unchanged(tmp_path, references, built):
    torch_model, _, _ = references("torchvision_resnet18")
    model = built("resnet18")
    state = dict(torch_model.state_dict())
    del state["layer2.0.downsample.1.running_var"]
    path = tmp_path / "lost.safetensors"
    safetensors.torch.save_file(state, path)
    with refusals.unchanged(model), pytest.raises(
        checkpoints.RestoreError, match="conv3_block1_0_bn/moving_variance"
    ) as error:
        checkpoints.restore(model, path)
    assert error.value.report.missing == ("conv3_block1_0_bn/moving_variance",)


def test_a_model_without_its_classifier_gives_torchs_pooled_features(references, images, tools):
    torch_model, paths, _ = references("torchvision_resnet18")
    model = normzoo.build("resnet18", weights=paths["safetensors"], num_classes=0, input_shape=SHAPE)
    features = torch.nn.Sequential(*list(torch_model.children())[:-1], torch.nn.Flatten())
    tools.assert_same_outputs(
        model(images, training=False).numpy(), _torch_outputs(features, images)
    )
    ignored = dict(model.restore_report.ignored)
    assert set(ignored) >= {"fc.weight", "fc.bias"}
    assert "predictions" in ignored["fc.weight"]


def _torch_outputs(module, images):
    with torch.no_grad():
        return module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def test_data_parallel_names_and_a_training_checkpoint_dict_are_read(
    tmp_path, references, built, images, tools
):
    torch_model, _, expected = references("torchvision_resnet18")
    model = built("resnet18")
    state = {f"module.{name}": value for name, value in torch_model.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "epoch": 90, "best_acc1": 0.7}, path)
    _scramble(model)
    report = checkpoints.restore(model, path)
    tools.assert_same_outputs(model(images, training=False).numpy(), expected)
    assert {"epoch", "best_acc1"} <= {name for name, _ in report.ignored}


class _Payload:
    """An object whose unpickling would create a file: what a malicious .pth runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_pth(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}, protocol=2))
    return path, marker


def test_a_pth_holding_other_objects_is_refused_without_running_them(tmp_path, built):
    path, marker = _malicious_pth(tmp_path)
    with pytest.raises(checkpoints.RestoreError, match="never unpickles"):
        checkpoints.restore(built("resnet18"), path)
    assert not marker.exists()


def test_without_torch_a_pth_file_is_refused_naming_safetensors(
    tmp_path, monkeypatch, references, built
):
    find_spec = torch_files.importlib.util.find_spec
    monkeypatch.setattr(
        torch_files.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch" else find_spec(name, *args),
    )
    _, paths, _ = references("torchvision_resnet18")
    malicious, marker = _malicious_pth(tmp_path)
    for path in (paths["pth"], malicious):
        with pytest.raises(checkpoints.RestoreError, match="torch is not installed") as error:
            checkpoints.restore(built("resnet18"), path)
        assert "safetensors" in str(error.value) and "Fix:" in str(error.value)
    assert not marker.exists()
    # The safetensors file needs no torch.
    assert checkpoints.restore(built("resnet18"), paths["safetensors"]).complete


def test_a_damaged_pth_is_refused_by_its_crc_and_the_model_is_unchanged(
    tmp_path, references, built
):
    _, paths, _ = references("torchvision_resnet18")
    data = bytearray(paths["pth"].read_bytes())
    # A byte inside the largest tensor's storage: torch.load itself would not notice.
    data[len(data) // 2] ^= 0x10
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(data))
    model = built("resnet18")
    with refusals.unchanged(model), pytest.raises(checkpoints.RestoreError, match="CRC-32"):
        checkpoints.restore(model, damaged)


def test_safetensors_report_says_not_verified_and_a_cut_file_is_refused(
    tmp_path, references, built
):
    _, paths, _ = references("torchvision_resnet18")
    report = checkpoints.restore(built("resnet18"), paths["safetensors"])
    assert not report.verified and "no checksums" in report.verification
    assert "not verified" in str(report)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(paths["safetensors"].read_bytes()[: os.path.getsize(paths["safetensors"]) - 100])
    with pytest.raises(checkpoints.RestoreError, match="truncated or damaged"):
        checkpoints.restore(built("resnet18"), cut)
