"""Fashion-MNIST from Debian's package dataset-fashion-mnist, through the one
pipeline: every split's size, labels and pixels equal the IDX files, read
here by a reader of this test's own (the IDX format: a big-endian header,
then the bytes); missing files are one clear error."""

import gzip
import os
import struct

import numpy as np
import pytest

import normzoo.data
from normzoo.data import fashion_mnist

DIRECTORY = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _idx(name):
    with gzip.open(os.path.join(DIRECTORY, name), "rb") as file:
        data = file.read()
    dimensions = data[3]
    shape = struct.unpack(f">{dimensions}I", data[4 : 4 + 4 * dimensions])
    return np.frombuffer(data[4 + 4 * dimensions :], np.uint8).reshape(shape)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    if not os.path.isdir(DIRECTORY):
        pytest.fail(f"{DIRECTORY} is missing: apt-get install dataset-fashion-mnist (.ci/run does)")
    data_dir = tmp_path_factory.mktemp("tfds")
    normzoo.data.prepared_builder("fashion_mnist", data_dir=data_dir)  # from the files, offline
    return data_dir


def _rows(images, labels):
    """Each example as bytes (its pixels, then its label), sorted: the
    multiset of examples, whatever their order."""
    flat = np.concatenate([images.reshape(len(images), -1), labels.reshape(-1, 1)], axis=1)
    return sorted(row.tobytes() for row in flat.astype(np.uint8))


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_example_of_the_pipeline_is_the_files_example(data_dir, split):
    images_name, labels_name = FILES[split]
    images, labels = _idx(images_name), _idx(labels_name)
    assert images.shape == ((60_000 if split == "train" else 10_000), 28, 28)

    info = normzoo.data.info("fashion_mnist", data_dir=data_dir)
    assert (info.train_examples, info.test_examples, info.test_split) == (60_000, 10_000, "test")
    assert info.num_classes == 10 and info.image_shape == (28, 28, 1)
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"

    batches = normzoo.data.load("fashion_mnist", split, data_dir=data_dir, global_batch_size=2000, training=False)
    got_images, got_labels = (np.concatenate(parts) for parts in zip(*((x.numpy(), y.numpy()) for x, y in batches)))
    # preprocess_mode "tf" maps a pixel p to p / 127.5 - 1: map it back.
    pixels = np.rint((got_images.astype(np.float64) + 1.0) * 127.5)
    assert pixels.min() >= 0 and pixels.max() <= 255
    assert _rows(pixels.astype(np.uint8), got_labels) == _rows(images, labels)


def test_missing_files_name_the_package_and_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FILES_DIRECTORY", str(tmp_path / "nothing"))
    with pytest.raises(normzoo.data.DatasetNotPreparedError) as error:
        normzoo.data.info("fashion_mnist", data_dir=tmp_path / "tfds")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert f"--data_dir={tmp_path / 'tfds'}" in message
    assert not (tmp_path / "tfds" / "fashion_mnist").exists() or not any((tmp_path / "tfds" / "fashion_mnist").iterdir())


def test_a_truncated_file_is_named(tmp_path, monkeypatch):
    # The right header (60,000 images of 28x28), then one image too few.
    header = struct.pack(">4I", 2051, 60_000, 28, 28)
    (tmp_path / FILES["train"][0]).write_bytes(gzip.compress(header + bytes(28 * 28 * 59_999), 1))
    monkeypatch.setattr(fashion_mnist, "FILES_DIRECTORY", str(tmp_path))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is not the Fashion-MNIST file"):
        fashion_mnist.read("train")
