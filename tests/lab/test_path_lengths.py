"""normzoo_lab.path_lengths against independent computations: brute-force
enumeration of paths, Stirling numbers of the first kind, and a random deep
linear BatchNorm ResNet; and the article's 97% for 10,000 blocks."""

import itertools
import math

import numpy as np
import pytest

from normzoo_lab import path_lengths


def _brute_force_shares(variances):
    """Sum over all 2^d paths of prod(1/v_i) over the branches taken, by length."""
    shares = np.zeros(len(variances) + 1)
    for taken in itertools.product((False, True), repeat=len(variances)):
        weight = math.prod(1.0 / v for v, branch in zip(variances, taken) if branch)
        shares[sum(taken)] += weight
    return shares / shares.sum()


def _stirling_first_kind(n):
    """Unsigned Stirling numbers c(n, k), k = 0..n, as exact integers: the
    coefficients of z (z + 1) ... (z + n - 1)."""
    coefficients = [1]
    for j in range(n):
        shifted = [0, *coefficients]
        coefficients = [a + j * b for a, b in zip(shifted, [*coefficients, 0])]
    return coefficients


def test_stirling_helper_matches_the_published_table():
    # c(4, k) = 0, 6, 11, 6, 1 and c(5, k) = 0, 24, 50, 35, 10, 1 (OEIS A132393).
    assert _stirling_first_kind(4) == [0, 6, 11, 6, 1]
    assert _stirling_first_kind(5) == [0, 24, 50, 35, 10, 1]


@pytest.mark.parametrize("input_variance", [0.0, 1.0, 2.5])
def test_distribution_matches_brute_force_enumeration_of_paths(input_variance):
    num_blocks = 9
    variances = input_variance + np.arange(num_blocks)  # v_i = s + i - 1
    with np.errstate(divide="ignore"):
        expected = _brute_force_shares(np.maximum(variances, 1e-300))
    shares = path_lengths.path_length_distribution(
        path_lengths.branch_probabilities(num_blocks, input_variance)
    )
    np.testing.assert_allclose(shares, expected, atol=1e-12)


@pytest.mark.parametrize("num_blocks", [1, 7, 40])
def test_distribution_is_stirling_numbers_of_the_first_kind(num_blocks):
    # s = 1: c(d + 1, k + 1) / (d + 1)!;  s = 0: c(d, k) / d!.
    counted_from_one = path_lengths.path_length_distribution(
        path_lengths.branch_probabilities(num_blocks, 1.0)
    )
    stirling = _stirling_first_kind(num_blocks + 1)
    expected = [c / math.factorial(num_blocks + 1) for c in stirling[1:]]
    np.testing.assert_allclose(counted_from_one, expected, rtol=1e-10, atol=1e-300)

    counted_from_zero = path_lengths.path_length_distribution(
        path_lengths.branch_probabilities(num_blocks, 0.0)
    )
    stirling = _stirling_first_kind(num_blocks)
    expected = [c / math.factorial(num_blocks) for c in stirling]
    np.testing.assert_allclose(counted_from_zero, expected, rtol=1e-10, atol=1e-300)


def test_mean_path_length_is_a_harmonic_number_minus_one():
    num_blocks = 10_000
    shares = path_lengths.path_length_distribution(path_lengths.branch_probabilities(num_blocks))
    harmonic = math.fsum(1.0 / j for j in range(1, num_blocks + 2))
    assert math.isclose(shares.sum(), 1.0, rel_tol=1e-9)
    assert math.isclose(np.dot(np.arange(num_blocks + 1), shares), harmonic - 1.0, rel_tol=1e-9)


def test_article_share_for_ten_thousand_blocks_and_fifteen_branches():
    # Article 004: "97% of the variance from paths through 15 or fewer residual
    # branches" for 10,000 blocks. The model gives it when blocks are counted
    # from 0 (the first block's input carries no variance, so every path takes
    # the first branch); counted from 1 (input variance 1) short paths weigh
    # more and the share is larger.
    counted_from_zero = path_lengths.share_within(10_000, 15, input_variance=0.0)
    counted_from_one = path_lengths.share_within(10_000, 15, input_variance=1.0)
    assert counted_from_zero == pytest.approx(0.97, abs=0.005)
    assert counted_from_zero < counted_from_one < 1.0


def test_linear_batchnorm_resnet_splits_its_variance_as_the_model_says():
    num_blocks = 10
    measured = path_lengths.linear_bn_resnet_monte_carlo(
        num_blocks, width=256, batch_size=512, max_length=num_blocks, seed=0
    )
    exact = path_lengths.path_length_distribution(path_lengths.branch_probabilities(num_blocks))
    np.testing.assert_allclose(measured["share"][: num_blocks + 1], exact, atol=0.015)
    # The premise: BatchNorm keeps every branch at variance 1, so the skip
    # path entering block i has variance about i.
    np.testing.assert_allclose(measured["skip_variance"], np.arange(1, num_blocks + 1), rtol=0.1)
    assert measured["total_variance"] == pytest.approx(num_blocks + 1, rel=0.1)


def test_lumped_long_paths_keep_the_split_exact():
    measured = path_lengths.linear_bn_resnet_monte_carlo(
        12, width=16, batch_size=32, max_length=3, seed=1
    )
    assert len(measured["share"]) == 5
    assert measured["share"].sum() == pytest.approx(1.0)
    assert measured["share"][-1] > 0.01  # paths through 4 or more of 12 branches


@pytest.mark.parametrize(
    "call",
    [
        lambda: path_lengths.branch_probabilities(0),
        lambda: path_lengths.branch_probabilities(5, input_variance=-1.0),
        lambda: path_lengths.path_length_distribution([0.5, 1.5]),
    ],
)
def test_invalid_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
