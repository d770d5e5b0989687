"""`normzoo.data.load` on the embedded digits dataset."""

import collections
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import normzoo.data

# One input pipeline feeding two replicas, as MirroredStrategy on one machine.
_TWO_REPLICAS = tf.distribute.InputContext(
    num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    normzoo.data.prepared_builder("digits", data_dir=data_dir)
    return data_dir


@pytest.fixture(scope="module")
def sklearn_splits():
    """{split: (pixels uint8 (N, 8, 8, 1), labels)} computed from sklearn, not from the builder."""
    data = load_digits()
    pixels = np.floor(data.images * 255.0 / 16.0 + 0.5).astype(np.uint8)[..., np.newaxis]
    return {
        "train": (pixels[:1437], data.target[:1437]),
        "test": (pixels[1437:], data.target[1437:]),
    }


def _pixels(images):
    """Inverts preprocess_mode="tf" (x / 127.5 - 1) back to integer pixel values."""
    values = (np.asarray(images, np.float64) + 1.0) * 127.5
    return np.rint(values).astype(np.int64)


def _batches(dataset, count=None):
    return [(images.numpy(), labels.numpy()) for images, labels in itertools.islice(dataset, count)]


def _examples(batches):
    """Counter of (pixel bytes, label) over all examples of the batches."""
    return collections.Counter(
        (image.astype(np.uint8).tobytes(), int(label))
        for images, labels in batches
        for image, label in zip(_pixels(images), labels)
    )


def _translations(image, pad):
    """Every window of `image` padded with `pad` zeros: all translations by up to `pad` pixels."""
    height, width = image.shape[:2]
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    return [
        padded[top : top + height, left : left + width]
        for top in range(2 * pad + 1)
        for left in range(2 * pad + 1)
    ]


def test_eval_yields_every_test_example_once_with_the_documented_shapes(data_dir, sklearn_splits):
    dataset = normzoo.data.load(
        "digits", "test", data_dir=data_dir, global_batch_size=64, training=False
    )
    batches = _batches(dataset)
    assert [len(labels) for _, labels in batches] == [64] * 5 + [40]
    images, labels = batches[0]
    assert images.dtype == np.float32 and images.shape == (64, 8, 8, 1)
    assert labels.dtype == np.int32 and labels.shape == (64,)
    assert min(images.min() for images, _ in batches) == -1.0
    assert max(images.max() for images, _ in batches) == 1.0
    pixels, sklearn_labels = sklearn_splits["test"]
    assert _examples(batches) == _examples([(pixels / 127.5 - 1.0, sklearn_labels)])


@pytest.mark.parametrize(
    "pipelines, replicas, global_batch_size, expected_steps",
    # 360 test examples. One pipeline, one replica: ceil(360 / 64) = 6 steps.
    # One pipeline feeding 2 replicas of 16: 23 batches, padded to 24 (12
    # steps, every replica one batch each). 3 pipelines of 120 examples, 2
    # replicas each of 16: 8 batches per pipeline (4 steps). 7 pipelines of
    # 52 or 51 examples, one replica of 17 each: 4 batches (68 examples,
    # the last 16 or 17 of them padding).
    [(1, 1, 64, 6), (1, 2, 32, 12), (3, 6, 96, 4), (7, 7, 119, 4)],
)
def test_repeated_eval_passes_cover_the_split_once_each_padded_to_evaluation_steps(
    data_dir, sklearn_splits, pipelines, replicas, global_batch_size, expected_steps
):
    """Each pass of the repeated evaluation stream (`evaluation_steps`
    steps of every replica, over every pipeline) is full batches: the
    pipeline's share of sklearn's test examples once, weight 1, in the
    order of its unrepeated stream, then blank examples (zero image, label
    0) of weight 0; never an empty batch. The next pass is the same."""
    contexts = [
        tf.distribute.InputContext(pipelines, pipeline, replicas) for pipeline in range(pipelines)
    ]
    steps = normzoo.data.evaluation_steps(
        "digits", "test", global_batch_size=global_batch_size, input_context=contexts[0],
        data_dir=data_dir,
    )
    assert steps == expected_steps
    replicas_per_pipeline = replicas // pipelines
    per_replica = global_batch_size // replicas
    shares = tfds.even_splits("test", n=pipelines) if pipelines > 1 else ["test"]
    seen = []
    for context in contexts:
        repeated = normzoo.data.load(
            "digits", "test", data_dir=data_dir, global_batch_size=global_batch_size,
            training=False, input_context=context, repeat=True,
        )
        # The pipeline's share, unrepeated, on one replica.
        once = _batches(normzoo.data.load(
            "digits", shares[context.input_pipeline_id], data_dir=data_dir,
            global_batch_size=per_replica, training=False,
        ))
        expected_images = np.concatenate([images for images, _ in once])
        expected_labels = np.concatenate([labels for _, labels in once])
        count = len(expected_labels)
        batches = [
            tuple(part.numpy() for part in batch)
            for batch in itertools.islice(repeated, 2 * steps * replicas_per_pipeline)
        ]
        assert all(images.shape == (per_replica, 8, 8, 1) for images, _, _ in batches)
        half = len(batches) // 2
        for pass_batches in (batches[:half], batches[half:]):
            images, labels, weights = (np.concatenate(parts) for parts in zip(*pass_batches))
            assert weights.dtype == np.float32
            np.testing.assert_array_equal(weights, np.arange(len(weights)) < count)
            np.testing.assert_array_equal(images[:count], expected_images)
            np.testing.assert_array_equal(labels[:count], expected_labels)
            assert not images[count:].any() and not labels[count:].any()
        seen.append((expected_images, expected_labels))
    pixels, labels = sklearn_splits["test"]
    assert _examples(seen) == _examples([(pixels / 127.5 - 1.0, labels)])


def test_a_single_evaluation_pass_is_refused_for_several_replicas(data_dir):
    """Its end would hand a replica an empty batch (on which TF's oneDNN
    convolution fails); the repeated, padded stream is the one to use."""
    for context in (_TWO_REPLICAS, tf.distribute.InputContext(2, 0, 2)):
        with pytest.raises(ValueError, match="feeds one replica.*Use repeat=True"):
            normzoo.data.load(
                "digits", "test", data_dir=data_dir, global_batch_size=8, training=False,
                input_context=context,
            )


def test_repeat_is_refused_for_training(data_dir):
    with pytest.raises(ValueError, match="repeat=True repeats the evaluation stream"):
        normzoo.data.load("digits", "test", data_dir=data_dir, global_batch_size=8, repeat=True, training=True)


def test_info_describes_the_digits_splits_classes_and_image_shape(data_dir):
    info = normzoo.data.info("digits", data_dir=data_dir)
    assert (info.train_examples, info.test_split, info.test_examples) == (1437, "test", 360)
    assert (info.name, info.num_classes, info.image_shape) == ("digits", 10, (8, 8, 1))
    assert info.class_names == tuple("0123456789")
    assert normzoo.data.info("digits", data_dir=data_dir, image_size=32).image_shape == (32, 32, 1)


def test_eval_is_deterministic(data_dir):
    dataset = normzoo.data.load(
        "digits", "test", data_dir=data_dir, global_batch_size=50, training=False
    )
    first, second = _batches(dataset), _batches(dataset)
    for (images_1, labels_1), (images_2, labels_2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(images_1, images_2)
        np.testing.assert_array_equal(labels_1, labels_2)


def test_training_batches_are_per_replica_full_and_repeat_past_an_epoch(data_dir):
    dataset = normzoo.data.load(
        "digits", "train", data_dir=data_dir, global_batch_size=32, training=True,
        input_context=_TWO_REPLICAS,
    )
    batches = _batches(dataset, 2 * 1437 // 16 + 1)  # more than two passes over the data
    assert len(batches) == 2 * 1437 // 16 + 1
    for images, labels in batches:
        assert images.shape == (16, 8, 8, 1) and images.dtype == np.float32
        assert labels.shape == (16,) and labels.dtype == np.int32
        assert -1.0 <= images.min() and images.max() <= 1.0
        assert 0 <= labels.min() and labels.max() <= 9


def test_digits_training_translates_by_at_most_one_pixel_and_never_flips(data_dir, sklearn_splits):
    pixels, labels = sklearn_splits["train"]
    allowed = {
        (window.tobytes(), int(label))
        for image, label in zip(pixels, labels)
        for window in _translations(image, pad=1)
    }
    untranslated = {(image.tobytes(), int(label)) for image, label in zip(pixels, labels)}
    dataset = normzoo.data.load(
        "digits", "train", data_dir=data_dir, global_batch_size=128, training=True, seed=3
    )
    outputs = _examples(_batches(dataset, 3))
    # A flipped digit is no translation of any training digit.
    assert set(outputs) <= allowed
    assert sum(count for example, count in outputs.items() if example not in untranslated) > 100


def test_training_stream_is_a_function_of_the_seed(data_dir):
    def first_batches(seed):
        dataset = normzoo.data.load(
            "digits", "train", data_dir=data_dir, global_batch_size=64, training=True, seed=seed
        )
        return _batches(dataset, 3)

    same_1, same_2, other = first_batches(0), first_batches(0), first_batches(1)
    for (images_1, labels_1), (images_2, labels_2) in zip(same_1, same_2):
        np.testing.assert_array_equal(images_1, images_2)
        np.testing.assert_array_equal(labels_1, labels_2)
    assert not np.array_equal(same_1[0][1], other[0][1])


def test_each_training_pass_is_shuffled_and_augmented_anew(data_dir, sklearn_splits):
    # 1437 = 3 * 479: every pass over the training split is exactly 3 batches.
    dataset = normzoo.data.load(
        "digits", "train", data_dir=data_dir, global_batch_size=479, training=True
    )
    batches = _batches(dataset, 6)
    first_pass, second_pass = batches[:3], batches[3:]
    first_labels = np.concatenate([labels for _, labels in first_pass])
    second_labels = np.concatenate([labels for _, labels in second_pass])
    # Each pass holds each training label exactly once...
    np.testing.assert_array_equal(np.sort(first_labels), np.sort(sklearn_splits["train"][1]))
    np.testing.assert_array_equal(np.sort(second_labels), np.sort(sklearn_splits["train"][1]))
    # ...in a new order, and with new augmentations.
    assert not np.array_equal(first_labels, second_labels)
    assert _examples(first_pass) != _examples(second_pass)


@pytest.mark.parametrize("input_context", [None, _TWO_REPLICAS], ids=["one_replica", "two_replicas"])
def test_training_epochs_are_the_streams_of_seed_plus_epoch_from_any_start_step(data_dir, input_context):
    """One stream of epochs yields what a loop building `load(seed=seed +
    epoch)` anew for every epoch would take from each (the reference), and
    `start_step` lands on exactly the batch that loop would reach, also
    when two replicas take two batches per step."""
    steps_per_epoch, per_step = 4, 1 if input_context is None else 2

    def load(**kwargs):
        return normzoo.data.load(
            "digits", "train", data_dir=data_dir, global_batch_size=32, training=True,
            input_context=input_context, **kwargs,
        )

    reference = []
    for epoch in range(3):
        reference += _batches(load(seed=5 + epoch), steps_per_epoch * per_step)
    for start_step in (0, 6):
        stream = load(seed=5, steps_per_epoch=steps_per_epoch, epochs=3, start_step=start_step)
        expected = reference[start_step * per_step :]
        for (images, labels), (reference_images, reference_labels) in zip(
            _batches(stream), expected, strict=True
        ):
            np.testing.assert_array_equal(images, reference_images)
            np.testing.assert_array_equal(labels, reference_labels)


def test_epochs_and_start_step_are_for_training_only(data_dir):
    with pytest.raises(ValueError, match="organize the training stream"):
        normzoo.data.load(
            "digits", "test", data_dir=data_dir, global_batch_size=8, training=False, start_step=1
        )
    for epochs, start_step in ((None, 0), (2, 6)):
        with pytest.raises(ValueError, match="needs positive steps_per_epoch and epochs"):
            normzoo.data.load(
                "digits", "train", data_dir=data_dir, global_batch_size=8, training=True,
                steps_per_epoch=3, epochs=epochs, start_step=start_step,
            )


def test_input_pipelines_read_disjoint_shares_that_cover_the_split(data_dir):
    whole = normzoo.data.load(
        "digits", "test", data_dir=data_dir, global_batch_size=40, training=False
    )
    shares = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=4
        )
        # One pass of the stream for several replicas (a single pass is for one).
        dataset = normzoo.data.load(
            "digits", "test", data_dir=data_dir, global_batch_size=40, training=False,
            input_context=context, repeat=True,
        )
        steps = normzoo.data.evaluation_steps(
            "digits", "test", data_dir=data_dir, global_batch_size=40, input_context=context
        )
        batches = [
            (images.numpy()[weights.numpy() > 0], labels.numpy()[weights.numpy() > 0])
            for images, labels, weights in itertools.islice(dataset, 2 * steps)
        ]
        assert steps == 9 and all(len(labels) == 10 for _, labels in batches)
        shares.append(_examples(batches))
    assert sum(shares[0].values()) == sum(shares[1].values()) == 180
    assert shares[0] + shares[1] == _examples(_batches(whole))


def test_training_pipelines_of_different_workers_differ(data_dir):
    def first_batch(pipeline_id):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        dataset = normzoo.data.load(
            "digits", "train", data_dir=data_dir, global_batch_size=64, training=True,
            input_context=context,
        )
        return _examples(_batches(dataset, 1))

    assert not set(first_batch(0)) & set(first_batch(1))


def test_mirrored_replicas_split_the_global_batch_a_single_device_would_get(data_dir, mirrored_strategy):
    def load(input_context=None):
        return normzoo.data.load(
            "digits", "train", data_dir=data_dir, global_batch_size=16, training=True,
            input_context=input_context, image_size=32, channels=3,
        )

    strategy = mirrored_strategy
    distributed = iter(strategy.distribute_datasets_from_function(load))
    single_device = _batches(load(), 2)
    for images, labels in single_device:
        replica_images, replica_labels = (
            [x.numpy() for x in strategy.experimental_local_results(value)]
            for value in next(distributed)
        )
        assert [x.shape for x in replica_images] == [(8, 32, 32, 3)] * 2
        np.testing.assert_array_equal(np.concatenate(replica_images), images)
        np.testing.assert_array_equal(np.concatenate(replica_labels), labels)


def test_digits_resized_to_cifar_shape_keep_their_content(data_dir):
    def eval_images(**kwargs):
        dataset = normzoo.data.load(
            "digits", "test", data_dir=data_dir, global_batch_size=360, training=False, **kwargs
        )
        ((images, _),) = _batches(dataset)
        return images

    native = eval_images()
    resized = eval_images(image_size=32, channels=3)
    info = normzoo.data.info("digits", data_dir=data_dir, image_size=32, channels=3)
    assert info.image_shape == (32, 32, 3) and resized.shape == (360, 32, 32, 3)
    np.testing.assert_array_equal(resized[..., 0], resized[..., 1])
    np.testing.assert_array_equal(resized[..., 0], resized[..., 2])
    # Each 4x4 block of an upsampled digit averages to about its source pixel.
    block_means = _pixels(resized[..., 0]).reshape(360, 8, 4, 8, 4).mean(axis=(2, 4))
    source = _pixels(native[..., 0])
    # Measured: 17.5 pixel levels (bilinear upsampling blurs); unrelated digits: 59.
    assert np.abs(block_means - source).mean() < 25.0


@pytest.mark.parametrize("mode", ["torch", "caffe"])
def test_imagenet_statistics_modes_follow_the_keras_formulas(data_dir, mode):
    reference = normzoo.data.load(
        "digits", "test", data_dir=data_dir, global_batch_size=360, training=False, channels=3
    )
    dataset = normzoo.data.load(
        "digits", "test", data_dir=data_dir, global_batch_size=360, training=False, channels=3,
        preprocess_mode=mode,
    )
    ((reference_images, _),) = _batches(reference)
    ((images, _),) = _batches(dataset)
    rgb = _pixels(reference_images).astype(np.float64)
    if mode == "torch":
        expected = (rgb / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    else:
        expected = rgb[..., ::-1] - [103.939, 116.779, 123.68]
    np.testing.assert_allclose(images, expected, atol=1e-4)


def test_sliced_splits_are_read(data_dir):
    dataset = normzoo.data.load(
        "digits", "train[:50%]", data_dir=data_dir, global_batch_size=100, training=False
    )
    # TFDS rounds percent slices down: 1437 // 2.
    assert sum(len(labels) for _, labels in _batches(dataset)) == 718


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="test", global_batch_size=3, input_context=_TWO_REPLICAS), "--batch_size"),
        (dict(split="train", global_batch_size=2048), "larger than the 1437 examples"),
        (dict(split="validation", global_batch_size=8), "'validation' does not exist"),
        (dict(split="test", global_batch_size=8, preprocess_mode="caffe"), "pass channels=3"),
        (dict(split="test", global_batch_size=8, channels=2), "grayscale to RGB"),
        (dict(split="test", global_batch_size=8, preprocess_mode="bgr"), "Unknown preprocess_mode"),
    ],
)
def test_invalid_arguments_are_rejected_with_the_fix(data_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        normzoo.data.load("digits", data_dir=data_dir, training=True, **kwargs)


def test_training_preprocessing_requires_a_seed():
    recipe = normzoo.data.preprocessing.recipe_for("digits", (8, 8, 1))
    with pytest.raises(ValueError, match="needs a seed"):
        normzoo.data.preprocessing.preprocess(tf.zeros((8, 8, 1), tf.uint8), recipe, training=True)
