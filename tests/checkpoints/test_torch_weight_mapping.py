"""The other torchvision and timm ResNets map onto normzoo's tensor for tensor.

test_torch_weights.py compares logits for resnet18 and resnet50, timm's
resnet50 and resnet50d and wide_resnet50_2; the naming rules are the same
at every depth, so for resnet34, resnet101, resnet152, wide_resnet101_2 and
timm's resnet18d (ResNet-D of basic blocks) it is enough that every tensor
of the state dict is placed on a normzoo variable of its shape, every
variable gets one, and each `num_batches_tracked` is reported as ignored.
torch builds them on its "meta" device (shapes only, no memory); the
restore goes through the same reader as a file, with zero-filled tensors of
those shapes.
"""

import numpy as np
import pytest
import timm
import torch
import torchvision

from normzoo import models
from normzoo.checkpoints import torch_files
from normzoo.checkpoints.restore import restore_source

DEEP = {
    "resnet34": torchvision.models.resnet34,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
    "wide_resnet101_2": torchvision.models.wide_resnet101_2,
    # timm's ResNet-D of basic blocks: its avg-down shortcuts' keys.
    "resnet18d": lambda: timm.create_model("resnet18d"),
}


@pytest.mark.parametrize("name", list(DEEP))
def test_every_tensor_of_the_state_dict_has_its_variable(name):
    with torch.device("meta"):
        reference = DEEP[name]()
    state = reference.state_dict()
    zeros = {key: np.broadcast_to(np.float32(0), tuple(value.shape)) for key, value in state.items()}
    source = torch_files.state_dict_source(f"{name}.safetensors", "torch_safetensors", zeros)
    model = models.build(name, layout="torchvision", input_shape=(32, 32, 3))

    report = restore_source(model, source)

    assert report.complete and len(report.restored) == len(model.weights)
    counters = [key for key in state if key.endswith("num_batches_tracked")]
    assert sorted(key for key, _ in report.ignored) == sorted(counters)
    assert len(model.weights) == len(state) - len(counters)
    trainable = sum(int(np.prod(variable.shape)) for variable in model.trainable_weights)
    assert trainable == sum(parameter.numel() for parameter in reference.parameters())
