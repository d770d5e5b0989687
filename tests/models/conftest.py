"""Tiny members of every model family, so that whole-model tests stay fast.

Each family is represented by a small configuration of the same builder
(narrow ImageNet ResNets on 32x32 images, CIFAR nets on 16x16 images): the
code paths are those of the full-size models. Tests get them through the
`build_tiny` and `random_batch` fixtures.
"""

import numpy as np
import pytest

from normzoo import models

NUM_CLASSES = 5

# family -> (model name, build overrides); one entry per kind of block.
TINY_FAMILIES = {
    "imagenet_v1_basic": ("resnet18", {"input_shape": (32, 32, 3), "width": 8}),
    "imagenet_v1_bottleneck": ("resnet50", {"input_shape": (32, 32, 3), "width": 8}),
    "imagenet_resnet_d": ("resnet50d", {"input_shape": (32, 32, 3), "width": 8}),
    "imagenet_v2": ("resnet50v2", {"input_shape": (32, 32, 3), "width": 8}),
    "cifar": ("resnet20", {"input_shape": (16, 16, 3), "width": 4}),
    "wide": ("wrn_16_1", {"input_shape": (16, 16, 3)}),
}


def _build_tiny(family, norm="batch", **overrides):
    name, defaults = TINY_FAMILIES[family]
    return models.build(name, norm=norm, num_classes=NUM_CLASSES, **{**defaults, **overrides})


def _random_batch(model, batch_size=4, seed=0):
    """Standard-normal images and random labels in [0, NUM_CLASSES)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, *model.input_shape[1:])).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=batch_size)
    return images, labels


@pytest.fixture
def build_tiny():
    return _build_tiny


@pytest.fixture
def random_batch():
    return _random_batch


@pytest.fixture(params=sorted(TINY_FAMILIES))
def family(request):
    return request.param


@pytest.fixture(params=("batch", "layer", "skipinit", "none"))
def norm(request):
    return request.param
