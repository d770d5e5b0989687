"""`_statistics.batch_sum`, the sum BatchNorm's statistics and closed-form
gradient take, written for XLA's CPU compiler with `compiled_by_xla`
(grouped rows, a maximum with -inf between the stages): the same values
as NumPy's sum, eagerly and inside `tf.function(jit_compile=True)`, for
row counts that are not multiples of the group, an empty batch, NaN and
infinities, an unknown batch size, and axes other than the leading ones."""

import numpy as np
import pytest
import tensorflow as tf

from normzoo.layers._statistics import batch_sum

CASES = {
    # shape, axes
    "channels_last_4d": ((5, 3, 7, 4), (0, 1, 2)),  # 105 rows: 13 groups of 8 and 1 row
    "fewer_rows_than_a_group": ((3, 4), (0,)),
    "exact_groups": ((16, 6), (0,)),
    "channels_first_4d": ((4, 3, 5, 6), (0, 2, 3)),  # not the leading axes
    "every_axis": ((4, 5), (0, 1)),
    "empty_batch": ((0, 3, 3, 2), (0, 1, 2)),
}


def values(shape, seed=0):
    return np.random.default_rng(seed).normal(1.5, 2.0, shape).astype("float32")


def expected(x, axes):
    return x.astype(np.float64).sum(axis=axes, keepdims=True)


@pytest.mark.parametrize("compiled_by_xla", [False, True])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_batch_sum_is_numpys_sum_eagerly_and_under_xla(case, compiled_by_xla):
    shape, axes = case
    x = values(shape)
    eager = batch_sum(tf.constant(x), axes, compiled_by_xla).numpy()
    xla = tf.function(lambda v: batch_sum(v, axes, compiled_by_xla), jit_compile=True)(tf.constant(x)).numpy()
    for result in (eager, xla):
        assert result.shape == expected(x, axes).shape
        np.testing.assert_allclose(result, expected(x, axes), rtol=1e-5, atol=1e-4)


def test_non_finite_values_reach_the_sum_unchanged_under_xla():
    """The maximum with -inf keeps NaN and infinities: a channel with a NaN
    sums to NaN, one with +inf to +inf, one with -inf to -inf."""
    x = values((20, 4))
    x[3, 0], x[17, 1], x[9, 2] = np.nan, np.inf, -np.inf
    result = tf.function(lambda v: batch_sum(v, (0,), True), jit_compile=True)(tf.constant(x)).numpy()
    assert np.isnan(result[0, 0]) and result[0, 1] == np.inf and result[0, 2] == -np.inf
    np.testing.assert_allclose(result[0, 3], x[:, 3].astype(np.float64).sum(), rtol=1e-5)


def test_an_unknown_batch_size_is_summed_under_xla():
    step = tf.function(
        lambda v: batch_sum(v, (0, 1, 2), True),
        jit_compile=True,
        input_signature=[tf.TensorSpec([None, 3, 3, 2], tf.float32)],
    )
    for batch in (1, 9, 24):
        x = values((batch, 3, 3, 2), seed=batch)
        np.testing.assert_allclose(step(tf.constant(x)).numpy(), expected(x, (0, 1, 2)), rtol=1e-5, atol=1e-4)
