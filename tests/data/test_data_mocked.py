"""`normzoo.data.load` and `info` on cifar10 and imagenet2012, offline, via mock_data.

The tensorflow-datasets wheel ships no fake example files, so each test
writes the metadata that `tfds build` would write (dataset_info.json,
features.json) into a temporary data_dir: the dataset is then "prepared"
there for every check normzoo makes, and `mock_data(policy=USE_FILES)`
serves random examples generated from the features' specification.
"""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

import normzoo.data


def _mock_prepared(data_dir, name, split_sizes):
    """Writes the metadata of a prepared `name` with `split_sizes` and mocks its examples.

    mock_data yields the same `num_examples` random examples for every split,
    so the returned context is meant for datasets whose splits have that size.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path,
        template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name,
        filetype_suffix="tfrecord",
    )
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=split, shard_lengths=[size], num_bytes=0, filename_template=template
                )
                for split, size in split_sizes.items()
            ]
        )
    )
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    return tfds.testing.mock_data(
        num_examples=max(split_sizes.values()),
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=str(data_dir),
    )


def _pixels(images):
    """Inverts preprocess_mode="tf" (x / 127.5 - 1) back to integer pixel values."""
    return np.rint((np.asarray(images, np.float64) + 1.0) * 127.5).astype(np.uint8)


def _images(dataset, count=None):
    return np.concatenate([images.numpy() for images, _ in itertools.islice(dataset, count)])


def test_cifar10_training_translates_by_up_to_4_pixels_and_flips(tmp_path):
    with _mock_prepared(tmp_path, "cifar10", {"train": 8, "test": 8}):
        source = normzoo.data.load(
            "cifar10", "train", data_dir=tmp_path, global_batch_size=8, training=False
        )
        dataset = normzoo.data.load(
            "cifar10", "train", data_dir=tmp_path, global_batch_size=8, training=True
        )
        images, labels = next(iter(dataset))
        assert tuple(images.shape) == (8, 32, 32, 3) and tuple(labels.shape) == (8,)
        info = normzoo.data.info("cifar10", data_dir=tmp_path)
        assert (info.num_classes, info.image_shape) == (10, (32, 32, 3))
        assert (info.train_examples, info.test_split, info.test_examples) == (8, "test", 8)
        sources = _pixels(_images(source))
        outputs = _pixels(_images(dataset, 12))

    padded = np.pad(sources, [(0, 0), (4, 4), (4, 4), (0, 0)])
    flipped_by_window = {}
    for top, left in itertools.product(range(9), repeat=2):
        for window in padded[:, top : top + 32, left : left + 32]:
            flipped_by_window[window.tobytes()] = False
            flipped_by_window[window[:, ::-1].tobytes()] = True
    flipped = [flipped_by_window.get(image.tobytes()) for image in outputs]
    assert None not in flipped, "a training image is no translation of a source image"
    assert set(flipped) == {False, True}
    untranslated = {image.tobytes() for image in sources}
    assert sum(image.tobytes() not in untranslated for image in outputs) > len(outputs) // 2


def test_imagenet2012_crops_variable_size_images_to_image_size(tmp_path):
    with _mock_prepared(tmp_path, "imagenet2012", {"train": 6, "validation": 6}):
        info = normzoo.data.info("imagenet2012", data_dir=tmp_path, image_size=16)
        assert (info.num_classes, info.image_shape) == (1000, (16, 16, 3))
        assert info.test_split == "validation"
        assert normzoo.data.info("imagenet2012", data_dir=tmp_path).image_shape == (224, 224, 3)
        train = normzoo.data.load(
            "imagenet2012", "train", data_dir=tmp_path, global_batch_size=6, training=True,
            image_size=16,
        )
        validation = normzoo.data.load(
            "imagenet2012", "validation", data_dir=tmp_path, global_batch_size=6,
            training=False, image_size=16,
        )
        train_images = _images(train, 2)
        first, second = _images(validation), _images(validation)
        # The stored images, read as normzoo reads them (mock_data generates
        # different random images for different decoders).
        builder = tfds.builder("imagenet2012", data_dir=tmp_path)
        encoded = builder.as_dataset(
            split="validation", decoders={"image": tfds.decode.SkipDecoding()}
        )
        raw = [
            builder.info.features["image"].decode_example(example["image"]).numpy()
            for example in encoded
        ]

    assert train_images.shape == (12, 16, 16, 3)
    np.testing.assert_array_equal(first, second)
    # Evaluation: the shorter side resized to 16 / 0.875 = 18, the central 16x16.
    for image, output in zip(raw, _pixels(first)):
        height, width = image.shape[:2]
        scale = 18 / min(height, width)
        resized_height, resized_width = round(height * scale), round(width * scale)
        top, left = (resized_height - 16) // 2, (resized_width - 16) // 2
        resized = _resize_bilinear(image.astype(np.float64), resized_height, resized_width)
        expected = np.clip(np.rint(resized[top : top + 16, left : left + 16]), 0, 255)
        assert np.abs(expected - output.astype(np.float64)).max() <= 1


def _resize_bilinear(image, height, width):
    """Bilinear resize with half-pixel centers (what tf.image.resize does), in NumPy."""

    def coordinates(out_size, in_size):
        centers = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        centers = np.clip(centers, 0, in_size - 1)
        low = np.floor(centers).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, centers - low

    rows_low, rows_high, row_weight = coordinates(height, image.shape[0])
    cols_low, cols_high, col_weight = coordinates(width, image.shape[1])
    col_weight = col_weight[:, None]

    def interpolate_columns(rows):
        return image[rows][:, cols_low] * (1 - col_weight) + image[rows][:, cols_high] * col_weight

    top, bottom = interpolate_columns(rows_low), interpolate_columns(rows_high)
    return top * (1 - row_weight)[:, None, None] + bottom * row_weight[:, None, None]


def test_info_needs_a_split_to_evaluate_on(tmp_path):
    with _mock_prepared(tmp_path, "cifar10", {"train": 4}):
        with pytest.raises(ValueError, match="neither a 'test' nor a 'validation' split"):
            normzoo.data.info("cifar10", data_dir=tmp_path)
