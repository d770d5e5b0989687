"""normzoo_lab.benchmarking: FLOP counts against the profiler and the paper, the
fit against NumPy, the side-by-side timer's bookkeeping (no timings are
asserted)."""

import keras
import numpy as np
import pytest

from normzoo import models
from normzoo_lab import benchmarking


def test_forward_multiply_adds_of_resnet50_match_the_paper():
    # He et al. 2016, Table 1: ResNet-50 at 224x224 is 3.8e9 multiply-adds
    # ("FLOPs"); keras.applications' ResNet-50 is the paper's network.
    model = keras.applications.ResNet50(weights=None)
    assert benchmarking.forward_multiply_adds(model) == pytest.approx(3.8e9, rel=0.02)


def test_forward_multiply_adds_equal_the_profilers_count():
    model = models.build("resnet20", input_shape=(32, 32, 3))
    profiled = benchmarking.profiled_float_ops(model, (32, 32, 3))
    assert set(profiled) == {"Conv2D", "MatMul"}
    assert 2 * benchmarking.forward_multiply_adds(model) == sum(profiled.values())


def test_forward_multiply_adds_of_a_small_net_by_hand():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4x4x4 outputs
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 4x4x4 outputs
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(x))  # 64 inputs
    model = keras.Model(inputs, outputs)
    expected = 4 * 4 * 4 * (3 * 3 * 3) + 4 * 4 * 4 * (3 * 3) + 64 * 5
    assert benchmarking.forward_multiply_adds(model) == expected


def test_forward_multiply_adds_needs_fixed_shapes():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="fixed input shape"):
        benchmarking.forward_multiply_adds(model)


def test_linear_fit_agrees_with_numpy():
    x = [6, 18, 48, 198]
    y = [0.11, 0.30, 0.92, 3.70]
    fit = benchmarking.linear_fit(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.slope == pytest.approx(slope)
    assert fit.intercept == pytest.approx(intercept)
    assert fit.r_squared == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    np.testing.assert_allclose(fit.residuals, np.array(y) - (intercept + slope * np.array(x)), atol=1e-12)


def test_compare_alternates_and_counts_every_step():
    calls = []

    def candidate(name):
        return lambda: calls.append(name)

    times = benchmarking.compare(
        {"a": (candidate("a"), ()), "b": (candidate("b"), ())},
        rounds=3, steps_per_round=2, warmup_steps=1,
    )
    # first call and warm-up of each, then rounds a b, b a, a b
    assert calls == ["a", "a", "b", "b"] + ["a"] * 2 + ["b"] * 4 + ["a"] * 4 + ["b"] * 2
    assert [len(t.samples) for t in times.values()] == [3, 3]
