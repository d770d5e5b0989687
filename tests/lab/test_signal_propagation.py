"""Signal propagation at initialization, De & Smith (2020), Figure 4.

Measured on a pre-activation Wide-ResNet (three stages of 8 blocks) with
standard-normal images. Within a stage the skip path is a plain sum
x_{i+1} = x_i + f_i(x_i), so its variance adds up the branches'. The
expected values follow from He initialization:

- BatchNorm: each branch ends with a conv of ReLU(BN(.)), whose per-channel
  variance is 2 * (E[relu(z)^2] - E[relu(z)]^2) = 1 - 1/pi ~ 0.68 for unit
  normal z, whatever the depth; so the skip variance grows linearly, by
  about that much per block (the paper: "slightly below 1").
- SkipInit: the branches are exactly 0, the skip variance stays at the
  variance of the stage's input.
- No normalization: a branch preserves its input's second moment, so the
  skip path roughly doubles per block (exponential growth).
"""

import math

import keras
import numpy as np
import pytest

from normzoo import models
from normzoo_lab import signal_propagation

_BLOCKS_PER_STAGE = 8
_NAME = f"wrn_{6 * _BLOCKS_PER_STAGE + 4}_1"
_SHAPE = (16, 16, 3)
_BATCH_BRANCH_VARIANCE = 1 - 1 / math.pi


def _measure(norm):
    model = models.build(_NAME, norm=norm, input_shape=_SHAPE)
    images = np.random.default_rng(0).standard_normal((32, *_SHAPE)).astype("float32")
    return signal_propagation.signal_propagation(model, images)


def _stages(values):
    return np.asarray(values).reshape(3, _BLOCKS_PER_STAGE)


def test_batch_norm_skip_variance_grows_linearly_while_branches_stay_constant():
    signals = _measure("batch")
    assert signals.blocks[:2] == ("conv2_block1", "conv2_block2")
    for skip, branch in zip(_stages(signals.skip_variance), _stages(signals.branch_variance)):
        # Every branch near 1 - 1/pi, independent of depth. 25%: 16 to 64
        # channels and zero-padded borders of 16x16 to 4x4 feature maps.
        np.testing.assert_allclose(branch, _BATCH_BRANCH_VARIANCE, rtol=0.25)
        # The skip variance before block i is the first's plus the branches
        # before it (branches nearly uncorrelated with the skip path).
        np.testing.assert_allclose(skip[1:], skip[0] + np.cumsum(branch[:-1]), rtol=0.1)
        # Hence a straight line, rising by about 1 - 1/pi per block.
        index = np.arange(len(skip))
        slope, intercept = np.polyfit(index, skip, 1)
        np.testing.assert_allclose(slope, _BATCH_BRANCH_VARIANCE, rtol=0.25)
        assert np.abs(skip - (slope * index + intercept)).max() < 0.1 * slope * len(skip)


def test_skipinit_skip_variance_stays_at_the_stage_input_variance():
    signals = _measure("skipinit")
    assert not np.any(signals.branch_variance)
    for skip in _stages(signals.skip_variance):
        np.testing.assert_array_equal(skip, skip[0])


def test_without_normalization_the_skip_variance_explodes():
    signals = _measure("none")
    # At least sqrt(2) per block: the per-channel variance leaves out the
    # channel means that take part of the doubling.
    assert signals.skip_variance[-1] / signals.skip_variance[0] > 2 ** (len(signals.blocks) / 2)


def test_measuring_changes_no_variable():
    model = models.build("wrn_10_1", input_shape=_SHAPE)
    before = [v.numpy().copy() for v in model.variables]
    signal_propagation.signal_propagation(model, np.ones((4, *_SHAPE), "float32"))
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value, variable.path)


def test_a_model_without_residual_blocks_is_refused():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="no residual block"):
        signal_propagation.residual_signals(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
