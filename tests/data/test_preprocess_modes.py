"""Each preprocess_mode is its source framework's own preprocessing.

The reference is the framework's function where one is installed:
keras.applications' `resnet.preprocess_input` ("caffe", what
keras.applications' ResNet50 weights expect) and `resnet_v2.preprocess_input`
("tf"); torchvision's normalization of its ResNet weights' own transforms
and timm's eval transform of its resnet50 ("torch"). TF-slim's
vgg_preprocessing is not installed: "vgg" is compared with the means it
subtracts (tensorflow/models research/slim/preprocessing/vgg_preprocessing.py:
_R_MEAN = 123.68, _G_MEAN = 116.78, _B_MEAN = 103.94, on float RGB pixels);
TF-slim's inception_preprocessing ("tf" for resnet_v2 checkpoints) is
(x / 255 - 0.5) * 2.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import timm
import timm.data
import torch
import torchvision
from torchvision.transforms import functional

from normzoo.data import preprocessing

# Fixed-size RGB images: preprocessing does no resize, so pixels map one to one.
SHAPE = (6, 5, 3)
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(4, *SHAPE), dtype=np.uint8)


def _normzoo(mode, images=IMAGES):
    recipe = preprocessing.recipe_for("cifar10", SHAPE, preprocess_mode=mode)
    return np.stack(
        [preprocessing.preprocess(tf.constant(image), recipe, training=False).numpy() for image in images]
    )


def _torch_normalize(normalize, images=IMAGES):
    """A torchvision Normalize (or its mean/std) applied to
    `transforms.ToTensor`'s [0, 1] CHW images, back to NHWC."""
    tensors = torch.stack([functional.to_tensor(image) for image in images])
    return normalize(tensors).permute(0, 2, 3, 1).numpy()


def test_caffe_is_keras_applications_resnet_preprocess_input():
    expected = keras.applications.resnet.preprocess_input(IMAGES.astype("float32"))
    np.testing.assert_allclose(_normzoo("caffe"), np.asarray(expected), atol=1e-4)


def test_tf_is_keras_applications_resnet_v2_and_slims_inception_preprocessing():
    expected = keras.applications.resnet_v2.preprocess_input(IMAGES.astype("float32"))
    np.testing.assert_allclose(_normzoo("tf"), np.asarray(expected), atol=1e-6)
    inception = (IMAGES.astype("float64") / 255.0 - 0.5) * 2.0
    np.testing.assert_allclose(_normzoo("tf"), inception, atol=1e-6)


def test_torch_is_torchvisions_resnet_weights_transform():
    transform = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    expected = _torch_normalize(
        lambda x: functional.normalize(x, mean=transform.mean, std=transform.std)
    )
    np.testing.assert_allclose(_normzoo("torch"), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "resnet50d"])
def test_torch_is_timms_eval_transform(name):
    config = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    transform = timm.data.create_transform(**config)
    (normalize,) = [t for t in transform.transforms if type(t).__name__ == "Normalize"]
    np.testing.assert_allclose(_normzoo("torch"), _torch_normalize(normalize), atol=1e-5)


def test_vgg_subtracts_slims_rgb_means():
    expected = IMAGES.astype("float64") - [123.68, 116.78, 103.94]
    np.testing.assert_allclose(_normzoo("vgg"), expected, atol=1e-4)
    # Not keras' "caffe": RGB order, and slim's own rounding of the means.
    assert np.abs(_normzoo("vgg") - _normzoo("caffe")).max() > 1.0


def test_every_mode_is_an_imagenet_mode_that_needs_rgb_except_tf():
    for mode in preprocessing.PREPROCESS_MODES:
        if mode == "tf":
            continue
        with pytest.raises(ValueError, match="pass channels=3"):
            preprocessing.recipe_for("digits", (8, 8, 1), preprocess_mode=mode)
