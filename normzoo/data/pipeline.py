"""Input pipelines for TFDS image-classification datasets (TensorFlow-only).

    info = normzoo.data.info("digits", image_size=32)
    steps_per_epoch = info.train_examples // 128
    dataset = normzoo.data.load("digits", "train", global_batch_size=128, training=True,
                                image_size=32)

    # One pipeline per worker, batched per replica:
    dataset = strategy.distribute_datasets_from_function(
        lambda context: normzoo.data.load(
            "cifar10", "train", data_dir=data_dir, global_batch_size=1024,
            training=True, input_context=context))

Datasets are never downloaded: a dataset must already be prepared in
`data_dir`, except the embedded "digits" dataset, which is prepared there
automatically (offline, in seconds).
"""

import dataclasses
import functools
import textwrap

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from normzoo import backends
from normzoo.data import fashion_mnist, preprocessing
from normzoo.data.digits import Digits

# The datasets prepared on first use, offline, by these builders: the
# embedded digits, and Fashion-MNIST from Debian's package's files.
_OFFLINE = {Digits.name: Digits, fashion_mnist.LocalFashionMNIST.name: fashion_mnist.LocalFashionMNIST}

# Shuffling holds this many encoded examples per input pipeline: the whole
# split of small datasets, a window of a large one (ImageNet's JPEGs).
_MAX_SHUFFLE_BUFFER = 10_000


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset is not prepared in `data_dir`, and normzoo does not download it."""


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a training loop needs to know about a dataset, from `info`.

    Attributes:
        name: The TFDS name of the dataset, e.g. "cifar10".
        num_classes: Number of classes; `load` yields int32 labels in
            [0, num_classes).
        class_names: The name of each class.
        image_shape: (height, width, channels) of the images `load` yields
            with the same `image_size` and `channels`.
        train_examples: Examples in the "train" split. Training datasets
            repeat forever: one epoch is `train_examples // global_batch_size`
            steps.
        test_split: The split to evaluate on: "test" if the dataset has one,
            else "validation" (imagenet2012).
        test_examples: Examples in `test_split`; an evaluation dataset yields
            each of them once, then ends.
        tfds_info: The dataset's `tfds.core.DatasetInfo` (features, all
            splits, citation).
    """

    name: str
    num_classes: int
    class_names: tuple
    image_shape: tuple
    train_examples: int
    test_split: str
    test_examples: int
    tfds_info: tfds.core.DatasetInfo


def prepared_builder(name, *, data_dir=None):
    """Returns the TFDS builder of `name`, with its data prepared in `data_dir`.

    The embedded "digits" dataset, and "fashion_mnist" from the files of
    Debian's package dataset-fashion-mnist (`normzoo.data.fashion_mnist`),
    are prepared in `data_dir` if they are not there yet (offline; several
    processes may do this concurrently). Any other dataset must have been
    prepared beforehand: this function never downloads, so it answers in
    seconds, also on machines without network.

    Args:
        name: A TFDS dataset name, optionally with config and version, e.g.
            "cifar10" or "cifar10:3.0.2".
        data_dir: The TFDS data directory; None is the TFDS default
            ($TFDS_DATA_DIR or ~/tensorflow_datasets).

    Raises:
        ValueError: if TFDS knows no dataset of that name, or if it is not an
            image-classification dataset (an `image` and a `label` feature).
        DatasetNotPreparedError: if the dataset is not prepared in
            `data_dir`; the message says how to prepare it.
    """
    builder = _builder(name, data_dir)
    if builder.is_prepared():
        return builder
    if builder.name not in _OFFLINE:
        raise DatasetNotPreparedError(_not_prepared_message(builder, data_dir))
    if builder.name == fashion_mnist.LocalFashionMNIST.name and fashion_mnist.missing_files():
        raise DatasetNotPreparedError(_fashion_mnist_missing_message(builder, data_dir))
    try:
        _OFFLINE[builder.name](data_dir=data_dir).download_and_prepare()
    except Exception:
        # Another process (another worker of the same job) may have finished
        # preparing the same directory first; its data is identical.
        if not _builder(name, data_dir).is_prepared():
            raise
        logging.info("Dataset %s was prepared concurrently by another process.", name)
    # A fresh builder reads the split sizes of the prepared data.
    return _builder(name, data_dir)


def info(name, *, data_dir=None, image_size=None, channels=None):
    """Returns the `DataInfo` of dataset `name`, prepared in `data_dir`.

    `image_size` and `channels` are those later passed to `load`: they
    decide `image_shape`. Raises what `prepared_builder` raises, and
    ValueError if the dataset has no "train" split, or neither a "test" nor
    a "validation" split.
    """
    backends.require_tensorflow("normzoo.data.info (TFDS datasets)")
    builder = prepared_builder(name, data_dir=data_dir)
    recipe = _recipe(builder, image_size, channels)
    splits = builder.info.splits
    test_split = next((split for split in ("test", "validation") if split in splits), None)
    if test_split is None:
        raise ValueError(
            f"Dataset {name!r} has neither a 'test' nor a 'validation' split (its splits: "
            f"{', '.join(sorted(splits))}), so normzoo does not know what to evaluate on."
        )
    labels = builder.info.features["label"]
    return DataInfo(
        name=builder.name,
        num_classes=labels.num_classes,
        class_names=tuple(labels.names),
        image_shape=recipe.output_shape,
        train_examples=_num_examples(builder, "train"),
        test_split=test_split,
        test_examples=_num_examples(builder, test_split),
        tfds_info=builder.info,
    )


def load(
    name,
    split,
    *,
    global_batch_size,
    training,
    data_dir=None,
    input_context=None,
    image_size=None,
    channels=None,
    preprocess_mode="tf",
    invert=False,
    seed=0,
    steps_per_epoch=None,
    epochs=None,
    start_step=0,
    repeat=False,
):
    """Returns a `tf.data.Dataset` of `(images, labels)` batches from a TFDS dataset.

    Works for any TFDS image-classification dataset (an `image` and a
    `label` feature): "digits" (embedded), "cifar10", "cifar100",
    "imagenet2012", ... with the standard augmentation for its kind (see
    `preprocessing.Recipe`): datasets of fixed-size images get a random
    translation of up to 1/8 of the size (CIFAR's pad-4 random crop) and a
    horizontal flip (not for digits), datasets of variable-size images
    (ImageNet) a random resized crop and flip in training, a resize and
    central crop in evaluation.

    What a user may rely on:

    - Elements are `(images, labels)`: float32 images of shape
      `(per_replica_batch_size, *info(...).image_shape)`, normalized by
      `preprocess_mode`, and int32 labels of shape `(per_replica_batch_size,)`
      (and float32 weights of that shape with `repeat=True`, see below).
    - Batches are per replica: `per_replica_batch_size` is
      `global_batch_size` divided by `input_context.num_replicas_in_sync`.
    - With an `input_context` of several input pipelines, each pipeline reads
      its own contiguous share of the split (`tfds.even_splits`); the shares
      are disjoint and together cover the split.
    - With one input pipeline feeding several replicas (MirroredStrategy on
      one machine), the replicas' batches of one step together are exactly
      the batch that a single replica gets from the same arguments.
    - Training (`training=True`): examples are shuffled, augmented and
      repeated forever, and every batch is full (static shape): an epoch is
      `train_examples // global_batch_size` steps, the examples left over at
      the end of one pass start the next batch. The stream is a deterministic
      function of `seed`, the input pipeline id and the number of pipelines:
      the same arguments give the same batches, and each pass over the data
      is shuffled and augmented anew.
    - Training in epochs (`steps_per_epoch` and `epochs`): the stream is
      `epochs` epochs of `steps_per_epoch` global batches each, then ends;
      epoch `e` is the first `steps_per_epoch` global batches of the stream
      above with seed `seed + e` (each epoch has its own order and
      augmentation; the examples left over at its end are not carried into
      the next). One iterator serves a whole run: no pipeline is rebuilt
      between epochs.
    - `start_step` starts the stream there, exactly as if its first
      `start_step` global batches had been read and dropped, without
      decoding or augmenting them (a resumed run continues with the batch
      it would have seen); in epochs, the epochs before
      `start_step // steps_per_epoch` are not read at all.
    - Evaluation (`training=False`): no shuffling, no augmentation, no
      repetition; every example once, in a fixed order, the last batch
      possibly partial. Iterating twice gives identical batches.
    - Evaluation repeated (`repeat=True`), the stream to evaluate on under a
      distribution strategy: elements are `(images, labels, weights)`, the
      evaluation stream above with float32 weights 1, in passes, forever,
      each pass padded at its end with blank examples (zero images, label
      0) of weight 0 so that it is exactly `evaluation_steps(...)` steps of
      the strategy in full batches (every pipeline's pass the same number
      of batches, a multiple of the replicas it feeds). No replica is ever
      handed an empty batch (TF 2.21's oneDNN convolution crashes on one);
      weigh each example's loss and accuracy by its weight. One iterator
      serves every evaluation of a run (taking `evaluation_steps` steps
      each time, which see every example once): no pipeline is built, and
      no iterator released, between evaluations.
    - A single evaluation pass (`training=False`, `repeat=False`) feeds one
      replica: over several, its end would hand some replica an empty
      batch (a ValueError says to use `repeat=True`).
    - Batches are prefetched (`tf.data.AUTOTUNE`).

    Args:
        name: A TFDS dataset name, e.g. "digits", "cifar10" or "imagenet2012".
        split: A TFDS split, e.g. "train", `info(...).test_split` or
            "train[:90%]".
        global_batch_size: Examples per step, over all replicas.
        training: True for the augmented, shuffled, repeated training stream.
        data_dir: The TFDS data directory where the dataset is prepared (the
            scripts' `--data_dir`); None is the TFDS default.
        input_context: A `tf.distribute.InputContext`, as passed by
            `strategy.distribute_datasets_from_function`. None is a single
            input pipeline feeding a single replica.
        image_size: Output height and width. None keeps the stored size of
            fixed-size images (32 for CIFAR, 8 for digits) and crops
            variable-size images to 224. E.g. 32 makes digits CIFAR-sized.
        channels: Output channels. None keeps the stored channels; 3 turns
            grayscale images (digits) into RGB.
        preprocess_mode: "tf" (pixels in [-1, 1]), "torch", "caffe" or "vgg":
            the normalization a checkpoint's weights expect (see
            `preprocessing.Recipe`).
        invert: Invert pixel values (255 - value) before the normalization:
            a domain shift (see `preprocessing.Recipe`).
        seed: Seed of the shuffling and the augmentation.
        steps_per_epoch: Global batches per epoch of the training stream
            (see above); None: one stream of passes, no epochs.
        epochs: Epochs of the training stream (with `steps_per_epoch`).
        start_step: Global batches of the training stream to drop at its
            start (see above).
        repeat: Repeat the evaluation stream in padded, weighted passes
            (see above); only with `training=False`.

    Raises:
        ValueError: for an unknown dataset or split, a batch size that the
            replicas cannot share, a training split smaller than one
            global batch, or a single evaluation pass for several replicas.
        DatasetNotPreparedError: see `prepared_builder`.
    """
    backends.require_tensorflow("normzoo.data.load (tf.data and TFDS input pipelines)")
    in_epochs = steps_per_epoch is not None or epochs is not None
    if not training and (in_epochs or start_step):
        raise ValueError(
            "steps_per_epoch, epochs and start_step organize the training stream "
            "(training=True); an evaluation dataset yields every example once."
        )
    if in_epochs and not (
        (steps_per_epoch or 0) > 0 and (epochs or 0) > 0 and start_step < steps_per_epoch * epochs
    ):
        raise ValueError(
            f"A training stream in epochs needs positive steps_per_epoch and epochs, and a "
            f"start_step before its end; got steps_per_epoch={steps_per_epoch!r}, "
            f"epochs={epochs!r}, start_step={start_step!r}."
        )
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0; got {start_step!r}.")
    if repeat and training:
        raise ValueError(
            "repeat=True repeats the evaluation stream (training=False); the training "
            "stream repeats itself."
        )
    input_context = input_context or tf.distribute.InputContext()
    if not training and not repeat and input_context.num_replicas_in_sync > 1:
        raise ValueError(
            f"A single evaluation pass (training=False, repeat=False) feeds one replica; over "
            f"{input_context.num_replicas_in_sync} replicas its end would hand some replica an "
            f"empty batch. Use repeat=True (full batches, padded with examples of weight 0) "
            f"and take evaluation_steps(...) steps per evaluation."
        )
    builder = prepared_builder(name, data_dir=data_dir)
    per_replica_batch_size = _per_replica_batch_size(global_batch_size, input_context)
    num_examples = _num_examples(builder, split)
    if training and num_examples < global_batch_size:
        raise ValueError(
            f"The global batch size {global_batch_size} (--batch_size) is larger than "
            f"the {num_examples} examples of {name}[{split}]: training would never "
            "complete an epoch. Use a smaller batch size."
        )
    recipe = _recipe(builder, image_size, channels, preprocess_mode, invert)
    image_feature = builder.info.features["image"]

    pipeline_split = _pipeline_split(split, input_context)

    def encoded(seed, **read):
        # Images stay encoded until after shuffling, so the shuffle buffer
        # holds small JPEG/PNG strings rather than decoded images.
        return builder.as_dataset(
            split=pipeline_split,
            decoders={"image": tfds.decode.SkipDecoding()},
            shuffle_files=training,
            read_config=tfds.ReadConfig(shuffle_seed=seed, **read),
        )

    def decode(example):
        return image_feature.decode_example(example["image"]), tf.cast(example["label"], tf.int32)

    if training:
        buffer_size = min(_num_examples(builder, pipeline_split), _MAX_SHUFFLE_BUFFER)

        def stream(seed, **read):
            """The encoded examples of the stream of `seed`, each with the
            seed of its augmentation: the position in the repeated stream
            seeds it, so it is deterministic and different in every pass."""
            examples = encoded(seed, **read).shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
            pipeline_seed = [seed, input_context.input_pipeline_id]
            seeds = tf.data.Dataset.from_tensors(tf.constant(pipeline_seed, tf.int64)).repeat()
            return tf.data.Dataset.zip(seeds, examples.repeat().enumerate())

        # This pipeline's examples of one global batch.
        step_examples = global_batch_size // input_context.num_input_pipelines
        if steps_per_epoch is None:
            dataset = stream(seed).skip(start_step * step_examples)
        else:
            # One stream per epoch, chained: decoding, augmentation, batching
            # and prefetching below serve them all. They are built here,
            # with Python seeds (TF 2.21 cannot seed a shuffle from a tensor
            # under a global seed of 0, so a dataset function cannot build
            # them as they come): about 0.1 s per epoch. Without TFDS's
            # in-memory cache, which every epoch would fill anew and keep.
            first_epoch, skipped_steps = divmod(start_step, steps_per_epoch)
            epoch_streams = [
                stream(seed + epoch, try_autocache=False, skip_prefetch=True).take(
                    steps_per_epoch * step_examples
                )
                for epoch in range(first_epoch, epochs)
            ]
            dataset = functools.reduce(tf.data.Dataset.concatenate, epoch_streams)
            dataset = dataset.skip(skipped_steps * step_examples)

        def train_example(pipeline_seed, indexed_example):
            position, example = indexed_example
            image, label = decode(example)
            example_seed = tf.random.experimental.stateless_fold_in(pipeline_seed, position)
            return preprocessing.preprocess(image, recipe, training=True, seed=example_seed), label

        dataset = dataset.map(train_example, num_parallel_calls=tf.data.AUTOTUNE)
    else:

        def eval_example(example):
            image, label = decode(example)
            return preprocessing.preprocess(image, recipe, training=False), label

        dataset = encoded(seed).map(eval_example, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        return _padded_passes(dataset, builder, split, recipe, per_replica_batch_size, input_context)
    dataset = dataset.batch(per_replica_batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _padded_passes(examples, builder, split, recipe, per_replica_batch_size, input_context):
    """The repeated evaluation stream of `load`: `(images, labels, weights)`
    batches of `examples` (this pipeline's share of `split`, in order), each
    pass padded with blank examples of weight 0 to `evaluation_steps` steps
    of full batches for every replica the pipeline feeds.

    Never an empty batch: TF 2.21's oneDNN convolution returns a wrong shape
    on one (tests/test_upstream.py), so a replica handed one crashed."""
    steps = _pass_steps(builder, split, per_replica_batch_size, input_context)
    replicas = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    pass_examples = steps * replicas * per_replica_batch_size
    share = _num_examples(builder, _pipeline_split(split, input_context))
    weighted = examples.map(lambda image, label: (image, label, tf.constant(1.0)))
    blank = (tf.zeros(recipe.output_shape, tf.float32), tf.constant(0, tf.int32), tf.constant(0.0))
    padding = tf.data.Dataset.from_tensors(blank).repeat(pass_examples - share)
    dataset = weighted.concatenate(padding).batch(per_replica_batch_size, drop_remainder=True)
    return dataset.repeat().prefetch(tf.data.AUTOTUNE)


def evaluation_steps(name, split, *, global_batch_size, input_context=None, data_dir=None):
    """The steps of one pass of `load(..., training=False, repeat=True)`:
    enough for the largest pipeline's share of `split` (with
    `input_context`'s pipelines and replicas; None: one of each) to be seen
    whole, every replica taking one batch per step."""
    builder = prepared_builder(name, data_dir=data_dir)
    input_context = input_context or tf.distribute.InputContext()
    per_replica_batch_size = _per_replica_batch_size(global_batch_size, input_context)
    return _pass_steps(builder, split, per_replica_batch_size, input_context)


def _pipeline_split(split, input_context):
    """The share of `split` that the input pipeline of `input_context` reads:
    its own contiguous part when there are several pipelines."""
    pipelines = input_context.num_input_pipelines
    if pipelines == 1:
        return split
    return tfds.even_splits(split, n=pipelines)[input_context.input_pipeline_id]


def _pass_steps(builder, split, per_replica_batch_size, input_context):
    """The steps of a pass of the repeated evaluation stream (see
    `evaluation_steps`)."""
    pipelines = input_context.num_input_pipelines
    shares = [split] if pipelines == 1 else tfds.even_splits(split, n=pipelines)
    batches = [-(-_num_examples(builder, share) // per_replica_batch_size) for share in shares]
    replicas = input_context.num_replicas_in_sync // pipelines  # those one pipeline feeds
    return max(1, -(-max(batches) // replicas))


def num_examples(name, split, *, data_dir=None):
    """The number of examples of `split` of dataset `name` (prepared in
    `data_dir`, see `prepared_builder`); `split` may be a slice such as
    "train[:1150]" or "train[80%:]".

    Raises:
        ValueError: the split does not exist (the message lists the dataset's
            splits); what `prepared_builder` raises.
    """
    return _num_examples(prepared_builder(name, data_dir=data_dir), split)


def _builder(name, data_dir):
    """`tfds.builder`, with clear errors for unknown or non-image-classification datasets."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset {name!r} (--dataset): tensorflow-datasets has no dataset of "
            "that name. Use 'digits' (embedded, no download) or the TFDS name of an "
            "image-classification dataset such as 'cifar10', 'cifar100' or 'imagenet2012' "
            "(catalog: https://www.tensorflow.org/datasets/catalog/overview)."
        ) from None
    features = builder.info.features
    features = dict(features.items()) if isinstance(features, tfds.features.FeaturesDict) else {}
    if not (
        isinstance(features.get("image"), tfds.features.Image)
        and isinstance(features.get("label"), tfds.features.ClassLabel)
    ):
        raise ValueError(
            f"Dataset {name!r} (--dataset) is not an image-classification dataset: "
            "normzoo needs an 'image' (tfds.features.Image) and a 'label' "
            f"(tfds.features.ClassLabel) feature, and {name!r} has {sorted(features) or 'none'}."
        )
    return builder


def _recipe(builder, image_size, channels, preprocess_mode="tf", invert=False):
    return preprocessing.recipe_for(
        builder.name,
        builder.info.features["image"].shape,
        image_size=image_size,
        channels=channels,
        preprocess_mode=preprocess_mode,
        invert=invert,
    )


def _fashion_mnist_missing_message(builder, data_dir):
    target = str(data_dir) if data_dir else "DIR"
    return (
        f"Dataset 'fashion_mnist' is not prepared in {data_dir or builder.data_dir_root}, and "
        f"the files normzoo prepares it from are not installed "
        f"({', '.join(fashion_mnist.missing_files())}). Install them (Debian, Ubuntu; 30 MB, "
        f"no other download):\n    apt-get install dataset-fashion-mnist\nor pass "
        f"--data_dir={target} (data_dir='{target}' for normzoo.data.load) where fashion_mnist "
        f"is already prepared (tfds build fashion_mnist --data_dir={target})."
    )


def _not_prepared_message(builder, data_dir):
    target = str(data_dir) if data_dir else "DIR"
    where = target if data_dir else f"the TFDS default data directory {builder.data_dir_root}"
    message = (
        f"Dataset {builder.name!r} is not prepared in {where} (there is no "
        f"{builder.data_dir}), and normzoo never downloads datasets: only the embedded "
        "'digits' dataset and 'fashion_mnist' (from Debian's dataset-fashion-mnist) are "
        "prepared automatically. Prepare it once, on a machine with "
        f"network access:\n    tfds build {builder.name} --data_dir={target}\n"
        f"then pass --data_dir={target} (scripts) or data_dir='{target}' (normzoo.data.load)."
    )
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        message += (
            f"\n{builder.name} cannot be downloaded automatically: first put its files in "
            f"{target}/downloads/manual (or pass --manual_dir to tfds build).\n"
            + textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).strip()
        )
    return message


def _per_replica_batch_size(global_batch_size, input_context):
    replicas = input_context.num_replicas_in_sync
    if global_batch_size < 1 or global_batch_size % replicas:
        raise ValueError(
            f"The global batch size {global_batch_size} (--batch_size) must be a positive "
            f"multiple of the number of replicas, {replicas}, so that every replica gets "
            "the same batch size."
        )
    return global_batch_size // replicas


def _num_examples(builder, split):
    try:
        return builder.info.splits[split].num_examples
    except ValueError as error:
        raise ValueError(
            f"Split {split!r} does not exist in {builder.name!r}: {error} "
            "(slices such as 'train[:90%]' are allowed)."
        ) from None
