"""Accuracy in mixed-class and in single-class batches: the symptom of lost
or stale BatchNorm statistics (article 002), measured by
lab/finetune_experiment.py.

A model whose BatchNorm statistics were lost or are stale predicts well on
batches of varied images and badly on batches of similar ones, when it
normalizes with batch statistics.
"""

import tensorflow as tf

from normzoo import data
from normzoo.training import EvalStep, evaluate


def single_class_batches(batches, batch_size):
    """The examples of the `(images, labels)` batches `batches`, rebatched so
    that every batch holds examples of one class only: a class's examples
    in stream order, in batches of `batch_size`, each class's last batch
    possibly partial (it comes out at the end of the stream)."""
    return batches.unbatch().group_by_window(
        key_func=lambda image, label: tf.cast(label, tf.int64),
        reduce_func=lambda label, window: window.batch(batch_size),
        window_size=batch_size,
    )


def evaluate_batch_dependence(
    model,
    dataset,
    *,
    batch_size,
    data_dir=None,
    image_size=None,
    invert=False,
    seed=0,
):
    """Top-1 accuracy on the test split in mixed-class and in single-class
    batches, in inference mode and with batch statistics.

    In inference mode (`training=False`) a BatchNorm network normalizes with
    its moving statistics, so every prediction is independent of the rest
    of its batch and both accuracies are equal, whatever the statistics are
    worth. With batch statistics (the model run with `training=True`, as a
    TF1 graph built with `is_training=True` runs at test time) each batch
    is normalized with its own statistics, and a batch of one class loses
    what tells its images from the others'. BatchNorm layers with frozen
    statistics (or not trainable) keep their moving statistics in both
    modes.

    Single device (the default strategy). No variable of the model changes.

    Args:
        model: A Keras model mapping images to logits.
        dataset: A dataset name for `normzoo.data.load`.
        batch_size: Examples per batch.
        data_dir, image_size, invert: As for `normzoo.data.load`.
        seed: Seed of the order of the mixed-class batches.

    Returns:
        {"mixed": {"inference": accuracy, "batch_statistics": accuracy},
         "single_class": {...}}.
    """
    info = data.info(dataset, data_dir=data_dir, image_size=image_size)
    test = data.load(
        dataset,
        info.test_split,
        global_batch_size=batch_size,
        training=False,
        data_dir=data_dir,
        image_size=image_size,
        invert=invert,
    )
    mixed = test.unbatch().shuffle(info.test_examples, seed=seed, reshuffle_each_iteration=False)
    batches = {
        "mixed": mixed.batch(batch_size),
        "single_class": single_class_batches(test, batch_size),
    }
    strategy = tf.distribute.get_strategy()
    steps = {
        "inference": EvalStep(model, strategy),
        "batch_statistics": EvalStep(model, strategy, batch_statistics=True),
    }
    return {
        batching: {mode: evaluate(step, stream)["accuracy"] for mode, step in steps.items()}
        for batching, stream in batches.items()
    }
