"""The lab's batch-dependence measurement (article 002's symptom): its
single-class batches against scikit-learn's labels, and its accuracies
against predictions computed here, batch by batch."""

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from normzoo import data, layers, models
from normzoo_lab.batch_dependence import evaluate_batch_dependence, single_class_batches


def _test_batches(batch_size):
    return data.load("digits", "test", global_batch_size=batch_size, training=False)


def _pairs(batches):
    return [(images.numpy(), labels.numpy()) for images, labels in batches]


def test_single_class_batches_hold_one_class_each_and_every_test_image_once():
    batches = _pairs(single_class_batches(_test_batches(16), 16))
    labels = load_digits().target[1437:]
    assert all((batch_labels == batch_labels[0]).all() for _, batch_labels in batches)
    assert all(len(batch_labels) <= 16 for _, batch_labels in batches)
    expected_batches = sum(math.ceil(np.sum(labels == c) / 16) for c in range(10))
    assert len(batches) == expected_batches
    by_bytes = lambda pairs: sorted(  # noqa: E731
        image.tobytes() + bytes([label]) for images, labels in pairs for image, label in zip(images, labels)
    )
    assert by_bytes(batches) == by_bytes(_pairs(_test_batches(16)))


def test_inference_is_batch_independent_and_batch_statistics_are_not():
    model = models.build("wrn_10_1", norm="batch", num_classes=10, input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNorm):  # statistics far from 0 and 1
            layer.moving_mean.assign(rng.normal(0.0, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    before = [v.numpy() for v in model.weights]

    accuracy = evaluate_batch_dependence(model, "digits", batch_size=16)

    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    images, labels = (np.concatenate(a) for a in zip(*_pairs(_test_batches(360))))
    # Inference: each prediction on its own (the whole split in one call).
    expected = np.mean(np.argmax(model(images, training=False).numpy(), -1) == labels)
    assert accuracy["mixed"]["inference"] == pytest.approx(expected, abs=1e-12)
    assert accuracy["single_class"]["inference"] == pytest.approx(expected, abs=1e-12)
    # Batch statistics: each single-class batch normalized with its own
    # statistics, as Keras' training-mode call computes them.
    correct = 0
    for batch_images, batch_labels in _pairs(single_class_batches(_test_batches(16), 16)):
        logits = model(batch_images, training=True).numpy()
        correct += np.sum(np.argmax(logits, -1) == batch_labels)
    for variable, value in zip(model.weights, before):
        variable.assign(value)
    assert accuracy["single_class"]["batch_statistics"] == pytest.approx(correct / len(labels), abs=1e-12)
    assert accuracy["single_class"]["batch_statistics"] != accuracy["mixed"]["batch_statistics"]
