"""Which paths carry the variance of a normalized ResNet at initialization
(De & Smith 2020, Figure 3).

A residual network of d blocks, x_{i+1} = x_i + f_i(x_i), unrolls into 2^d
paths: a path picks, at every block, either the skip connection or the
residual branch, and its length is the number of branches it goes through.

The model. With BatchNorm at the end of every branch (or before its last
convolution, as in a pre-activation block), each branch output has variance
about 1 whatever its input, while the skip path adds them up: if the input of
the first block has variance s (in units of a branch's variance), block i's
input has variance v_i = s + i - 1. At initialization BatchNorm divides
branch i's input by sqrt(v_i), so a path through branch i is scaled by
1/sqrt(v_i) in standard deviation, 1/v_i in variance, relative to the same
path skipping it. With independent random weights different paths are
uncorrelated, so the output variance is the sum over paths of the product of
1/v_i over the branches they take:

    Var(x_{d+1}) = s * prod_i (1 + 1/v_i),
    share of paths of length k = e_k(1/v_1, ..., 1/v_d) / prod_i (1 + 1/v_i),

with e_k the elementary symmetric polynomial. That is the distribution of a
sum of independent Bernoulli(p_i) with p_i = (1/v_i) / (1 + 1/v_i) =
1/(s + i): a Poisson-binomial, computed exactly by `path_length_distribution`.
For s = 1 (the article's "the activation before block i has variance i",
blocks counted from 1) p_i = 1/(i + 1) and the share of length k is
c(d + 1, k + 1) / (d + 1)!, c the unsigned Stirling numbers of the first
kind; for s = 0 (blocks counted from 0: the first block's input carries no
variance, so every path takes the first branch) p_i = 1/i and the share is
c(d, k) / d!. The mean length is the sum of the p_i, about ln(d).

`linear_bn_resnet_monte_carlo` checks the model on an actual random deep
linear ResNet with BatchNorm (the network of the paper's Figure 4(a)),
splitting its output exactly into the contributions of paths of each length.

Reference:
    De & Smith, "Batch Normalization Biases Residual Blocks Towards the
    Identity Function in Deep Networks", NeurIPS 2020, arXiv:2002.10444.
"""

import numpy as np


def branch_probabilities(num_blocks, input_variance=1.0):
    """p_i = 1/(input_variance + i) for i = 1..num_blocks: the share of block
    i's output variance that comes through its residual branch."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1; got {num_blocks}.")
    if input_variance < 0:
        raise ValueError(f"input_variance must be >= 0; got {input_variance}.")
    return 1.0 / (input_variance + np.arange(1, num_blocks + 1, dtype=np.float64))


def path_length_distribution(probabilities):
    """The distribution of the number of branches a path goes through, with
    `probabilities[i]` the share of block i's variance through its branch.

    Exact (Poisson-binomial) by dynamic programming over the blocks, in
    O(d^2) float64 operations.

    Returns:
        share: float64 array of length d + 1; share[k] is the share of the
            output variance carried by paths through exactly k branches.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 1 or np.any((probabilities < 0) | (probabilities > 1)):
        raise ValueError("probabilities must be a 1-D array of values in [0, 1].")
    share = np.zeros(len(probabilities) + 1)
    share[0] = 1.0
    for block, p in enumerate(probabilities, start=1):
        # Paths of length k after this block: length k before and skip it, or
        # length k - 1 before and take its branch.
        share[1 : block + 1] = share[1 : block + 1] * (1.0 - p) + share[:block] * p
        share[0] *= 1.0 - p
    return share


def share_within(num_blocks, max_length, input_variance=1.0):
    """Share of the output variance of a normalized ResNet of `num_blocks`
    blocks carried by paths through at most `max_length` residual branches."""
    share = path_length_distribution(branch_probabilities(num_blocks, input_variance))
    return float(share[: max_length + 1].sum())


def linear_bn_resnet_monte_carlo(
    num_blocks, *, width=256, batch_size=512, max_length=30, seed=0, epsilon=1e-5
):
    """Measures the share of output variance per path length on a random
    deep linear ResNet with BatchNorm at initialization.

    The network: x_1 ~ N(0, 1) of shape (batch_size, width); block i computes
    x_{i+1} = x_i + BN(x_i W_i), with W_i ~ N(0, 1/width) and BN normalizing
    each channel with the batch's mean and variance (no affine parameters,
    gamma = 1 and beta = 0 as at initialization). Once the batch statistics
    are fixed BN is linear, so x splits exactly into components x^(k), the
    contribution of the paths through k branches:
    x_{i+1}^(k) = x_i^(k) + BN_i(x_i^(k-1) W_i), with BN_i using the
    statistics of the whole x_i W_i. Paths longer than `max_length` are kept
    together in one last component, so the components always add up to x.

    The model's independence of paths holds in expectation; in one finite
    network the components are slightly (negatively) correlated, by an
    amount that shrinks as width and batch grow (at width 64, batch 128 and
    30 blocks the component variances add up to 1.4x the output's; at 256
    and 512, 1.04x). Computed in float32.

    Returns:
        A dict: "share" (float64 array of length max_length + 2, the
        variance of each component, averaged over channels, over their sum;
        the last entry lumps all lengths > max_length), "skip_variance" (the
        variance of x_i entering each block, averaged over channels) and
        "total_variance" (that of the output).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, width), dtype=np.float32)
    components = np.zeros((max_length + 2, batch_size, width), dtype=np.float32)
    components[0] = x
    skip_variance = []
    for _ in range(num_blocks):
        skip_variance.append(float(components.sum(axis=0).var(axis=0).mean()))
        weights = rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)
        branch = components @ weights
        full = branch.sum(axis=0)
        scale = 1.0 / np.sqrt(full.var(axis=0) + epsilon)
        normalized = (branch - branch.mean(axis=1, keepdims=True)) * scale
        components[1:] += normalized[:-1]
        components[-1] += normalized[-1]  # longer paths stay in the last component
    variances = components.var(axis=1).mean(axis=-1).astype(np.float64)
    return {
        "share": variances / variances.sum(),
        "skip_variance": np.array(skip_variance),
        "total_variance": float(components.sum(axis=0).var(axis=0).mean()),
    }
