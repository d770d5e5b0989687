"""The embedded digits dataset against scikit-learn's own arrays."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from normzoo.data import digits


@pytest.fixture(scope="module")
def sklearn_digits():
    data = load_digits()
    # Independent of the builder's integer formula: round(count * 255 / 16), halves up.
    images = np.floor(data.images * 255.0 / 16.0 + 0.5).astype(np.uint8)[..., np.newaxis]
    return images, data.target


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    builder = tfds.builder("digits", data_dir=tmp_path_factory.mktemp("tfds"))
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def stored(builder):
    """{split: (index, images, labels)} as the builder yields them, in stored order."""
    splits = {}
    for split in ("train", "test"):
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        splits[split] = (
            np.array([example["index"] for example in examples]),
            np.stack([example["image"] for example in examples]),
            np.array([example["label"] for example in examples]),
        )
    return splits


def test_features_are_uint8_8x8x1_images_and_ten_named_classes(builder):
    features = builder.info.features
    assert features["image"].shape == (8, 8, 1)
    assert features["image"].np_dtype == np.uint8
    assert features["label"].num_classes == 10
    assert features["label"].names == [str(digit) for digit in range(10)]
    assert builder.info.supervised_keys == ("image", "label")


@pytest.mark.parametrize(
    "split, first_row, num_examples", [("train", 0, 1437), ("test", 1437, 360)]
)
def test_split_holds_the_documented_rows_of_sklearn_scaled_to_uint8(
    builder, stored, sklearn_digits, split, first_row, num_examples
):
    sklearn_images, sklearn_labels = sklearn_digits
    index, images, labels = stored[split]
    order = np.argsort(index)
    np.testing.assert_array_equal(index[order], np.arange(first_row, first_row + num_examples))
    np.testing.assert_array_equal(images[order], sklearn_images[index[order]])
    np.testing.assert_array_equal(labels[order], sklearn_labels[index[order]])
    assert builder.info.splits[split].num_examples == num_examples


def test_split_sizes_match_the_module_constants_and_cover_sklearn_once(stored):
    assert (digits.TRAIN_EXAMPLES, digits.TEST_EXAMPLES) == (1437, 360)
    train_index, test_index = stored["train"][0], stored["test"][0]
    assert not set(train_index) & set(test_index)
    assert sorted(np.concatenate([train_index, test_index])) == list(range(1797))


def test_scaling_maps_counts_0_8_16_to_0_128_255(stored):
    counts = load_digits().images
    index, images, _ = stored["train"]
    counts, images = counts[index], images[..., 0]
    for count, value in [(0, 0), (8, 128), (16, 255)]:
        assert (counts == count).any()
        assert (images[counts == count] == value).all()


def test_every_class_is_in_both_splits_as_documented(stored):
    train_counts = np.bincount(stored["train"][2], minlength=10)
    test_counts = np.bincount(stored["test"][2], minlength=10)
    assert 141 <= train_counts.min() and train_counts.max() <= 146
    assert 33 <= test_counts.min() and test_counts.max() <= 37


def test_prepares_without_network_to_identical_files(builder, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("preparing the digits dataset tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    again = tfds.builder("digits", data_dir=tmp_path)
    again.download_and_prepare()
    for split in ("train", "test"):
        (first,) = builder.data_path.glob(f"digits-{split}.tfrecord*")
        (second,) = again.data_path.glob(f"digits-{split}.tfrecord*")
        assert first.read_bytes() == second.read_bytes()
