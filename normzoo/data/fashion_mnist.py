"""Fashion-MNIST, offline: TFDS's `fashion_mnist` prepared from the original
IDX files that Debian's package `dataset-fashion-mnist` installs.

    apt-get install dataset-fashion-mnist     # /usr/share/datasets/fashion-mnist/, 30 MB
    normzoo-train --dataset=fashion_mnist     # prepared in --data_dir on first use

The files are the ones TFDS's own builder downloads (60,000 training and
10,000 test images, 28x28 grey, 10 classes, gzip IDX). `LocalFashionMNIST`
is TFDS's builder (same name, version, features and example keys) with
the download replaced by a read of those files, so the prepared dataset is
the one `tfds.load("fashion_mnist")` reads, and normzoo's pipeline serves
it like any other TFDS dataset. `normzoo.data.prepared_builder` prepares it
when it is not in `data_dir` yet.
"""

import gzip
import os

import numpy as np
from tensorflow_datasets.image_classification import mnist

# Where Debian's dataset-fashion-mnist puts the files.
FILES_DIRECTORY = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
# IDX magic numbers: unsigned bytes, 3 dimensions (images) or 1 (labels).
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_SIDE = 28


class FilesMissingError(FileNotFoundError):
    """The IDX files are not installed; the message says how to install them."""


def missing_files(directory=None):
    """The paths of the IDX files missing from `directory` (None:
    `FILES_DIRECTORY`)."""
    directory = directory or FILES_DIRECTORY
    names = [name for images, labels, _ in FILES.values() for name in (images, labels)]
    return [os.path.join(directory, name) for name in names if not os.path.isfile(os.path.join(directory, name))]


def _read_idx(path, magic, count, shape):
    with gzip.open(path, "rb") as file:
        data = file.read()
    header = 4 * (1 + 1 + len(shape))
    values = np.frombuffer(data[:header], dtype=">u4")
    expected = [magic, count, *shape]
    if values.tolist() != expected or len(data) != header + count * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(
            f"{path} is not the Fashion-MNIST file it is named after: its IDX header is "
            f"{values.tolist()} with {len(data) - header} bytes of data, not {expected}. "
            f"Reinstall it: apt-get install --reinstall dataset-fashion-mnist."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(count, *shape)


def read(split, directory=None):
    """(images, labels) of `split` ("train" or "test") from the IDX files in
    `directory` (None: `FILES_DIRECTORY`): uint8 arrays of shape
    (n, 28, 28, 1) and (n,), in the files' order."""
    directory = directory or FILES_DIRECTORY
    images_name, labels_name, count = FILES[split]
    images = _read_idx(os.path.join(directory, images_name), _IMAGES_MAGIC, count, (_SIDE, _SIDE))
    labels = _read_idx(os.path.join(directory, labels_name), _LABELS_MAGIC, count, ())
    return images[..., np.newaxis], labels


class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
    """TFDS's `fashion_mnist` builder, prepared from the local IDX files
    (`FILES_DIRECTORY`) instead of a download: the same dataset, examples
    keyed by their position in the files, as TFDS's builder keys them."""

    name = mnist.FashionMNIST.name

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        missing = missing_files()
        if missing:
            raise FilesMissingError(f"Missing: {', '.join(missing)}")
        return {split: self._generate_examples(*read(split)) for split in FILES}

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": label}
