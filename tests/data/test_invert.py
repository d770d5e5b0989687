"""`normzoo.data.load(invert=True)` (a domain shift), against scikit-learn's
own copy of the digits."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

import normzoo.data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    normzoo.data.prepared_builder("digits", data_dir=data_dir)
    return data_dir


def _batches(data_dir, **kwargs):
    dataset = normzoo.data.load("digits", "test", data_dir=data_dir, global_batch_size=16, **kwargs)
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def test_inverted_pixels_are_255_minus_the_stored_ones(data_dir):
    images = np.concatenate([images for images, _ in _batches(data_dir, training=False, invert=True)])
    # preprocess_mode="tf" gives x / 127.5 - 1 of the (inverted) pixel value.
    inverted = np.rint((images.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)
    stored = np.floor(load_digits().images[1437:] * 255.0 / 16.0 + 0.5).astype(np.uint8)
    # The TFDS split holds sklearn's test rows in its own order: compare sorted rows.
    rows = lambda pixels: sorted(row.tobytes() for row in pixels.reshape(len(pixels), -1))  # noqa: E731
    assert rows(255 - inverted) == rows(stored)


def test_inverting_after_augmentation_negates_the_training_images(data_dir):
    # In the [-1, 1] scale an inverted image is the negated image, padding
    # of the random translation included, for the same seed.
    kwargs = dict(split="train", data_dir=data_dir, global_batch_size=16, training=True, seed=3)
    plain = next(iter(normzoo.data.load("digits", **kwargs)))
    inverted = next(iter(normzoo.data.load("digits", invert=True, **kwargs)))
    np.testing.assert_array_equal(inverted[1].numpy(), plain[1].numpy())
    np.testing.assert_allclose(inverted[0].numpy(), -plain[0].numpy(), rtol=0, atol=1e-6)
