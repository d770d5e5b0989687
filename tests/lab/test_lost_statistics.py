"""The lab's reproduction of article 002's bug: a checkpoint as a restore of
its trainable variables only leaves it. Checked against Keras' own
`load_weights` of the original file, against the statistics a fresh
BatchNorm starts with (mean 0, variance 1), and through `normzoo.bn.audit`
and a fine-tune that starts from it."""

import json

import numpy as np
import pytest

from normzoo import bn, layers, models
from normzoo.training import train
from normzoo_lab import lost_statistics

STATISTICS = ("moving_mean", "moving_variance")


def _wrn():
    return models.build("wrn_10_1", norm="batch", num_classes=10, input_shape=(8, 8, 1))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(path, {variable path: value}): a WRN-10-1 with random weights and
    moving statistics far from their initial values."""
    model = _wrn()
    rng = np.random.default_rng(1)
    for variable in model.weights:
        if variable.path.endswith("moving_variance"):
            variable.assign(rng.uniform(0.5, 2.0, variable.shape))
        else:
            variable.assign(rng.normal(0.0, 0.3, variable.shape))
    path = tmp_path_factory.mktemp("pretrained") / "pretrained.weights.h5"
    model.save_weights(path)
    return path, {variable.path: variable.numpy() for variable in model.weights}


def test_the_file_keeps_the_trainable_variables_and_resets_the_statistics(pretrained, tmp_path):
    path, values = pretrained
    output = tmp_path / "lost.weights.h5"
    lost_statistics.without_statistics(path, output, model="wrn_10_1", input_shape=(8, 8, 1))

    model = _wrn()
    model.load_weights(output)  # Keras' own reader
    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNorm)]
    assert norms
    for layer in norms:
        np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros(layer.moving_mean.shape))
        np.testing.assert_array_equal(layer.moving_variance.numpy(), np.ones(layer.moving_variance.shape))
    for variable in model.trainable_weights:
        np.testing.assert_array_equal(variable.numpy(), values[variable.path], err_msg=variable.path)
    assert sorted(problem.layer for problem in bn.audit(model)) == sorted(layer.name for layer in norms)


def test_a_finetune_from_it_starts_with_the_statistics_audit_names(pretrained, tmp_path, tiny_config):
    path, values = pretrained
    output = tmp_path / "lost.weights.h5"
    lost_statistics.without_statistics(path, output, model="wrn_10_1", input_shape=(8, 8, 1))

    result = train(tiny_config(tmp_path / "run", output, bn="frozen_stats"))

    norms = sorted(layer.name for layer in result.model.layers if isinstance(layer, layers.BatchNorm))
    assert sorted(problem.layer for problem in result.initialization.audit) == norms
    for layer in result.model.layers:  # frozen statistics: still mean 0, variance 1
        if isinstance(layer, layers.BatchNorm):
            np.testing.assert_array_equal(layer.moving_variance.numpy(), np.ones(layer.moving_variance.shape))
    written = json.loads((tmp_path / "run" / "restore_report.json").read_text())
    assert written["report"]["skipped"] == []  # the library restored every variable of the file
    assert sorted(written["report"]["restored"]) == sorted(values)
