"""Helpers shared by the normalization layers: dtypes, axes, moments, and
batch normalization's closed-form kernel (`closed_form_training`)."""

import math
from collections.abc import Callable
from typing import NamedTuple

import keras
from keras import ops

_HALF_DTYPES = ("float16", "bfloat16")


def statistics_dtype(variable_dtype):
    """The dtype in which a layer keeps and computes its statistics.

    Half-precision statistics overflow or lose the variance entirely, so under
    any float16/bfloat16 policy (mixed or not) statistics and affine parameters
    are float32; a float64 policy keeps float64.
    """
    dtype = keras.backend.standardize_dtype(variable_dtype)
    return "float32" if dtype in _HALF_DTYPES else dtype


class AxisError(ValueError, IndexError):
    """An axis outside an input's rank. Both a ValueError and an IndexError
    (like NumPy's AxisError): Keras 3.15's LayerNormalization raises
    IndexError for such an axis, later Keras ValueError, and code written
    against either keeps working."""


def normalize_axes(axis, ndim, argument="axis"):
    """Returns `axis` (an int or a sequence of ints) as a sorted tuple of
    non-negative axes of an `ndim`-dimensional input, or raises ValueError
    (`AxisError` for an axis out of range)."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes:
        raise ValueError(f"`{argument}` must name at least one axis; got {axis!r}.")
    normalized = []
    for a in axes:
        if not isinstance(a, int):
            raise ValueError(
                f"`{argument}`={axis!r} holds {a!r}, which is not an int: pass ints."
            )
        if not -ndim <= a < ndim:
            raise AxisError(
                f"`{argument}`={axis!r} is out of range for an input of rank "
                f"{ndim}: each axis must be an int in [{-ndim}, {ndim - 1}]."
            )
        normalized.append(a % ndim)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"`{argument}`={axis!r} names the same axis twice: name each axis once.")
    return tuple(sorted(normalized))


def broadcast_shape(input_shape, kept_axes):
    """Shape that broadcasts a per-`kept_axes` tensor against the input."""
    return [input_shape[a] if a in kept_axes else 1 for a in range(len(input_shape))]


def shifted_moments(x, axes, mask=None, compiled_by_xla=False):
    """Moments of `x` over `axes` (keepdims) by the shifted-data algorithm;
    with a boolean `mask` (broadcastable to `x`, of `x`'s shape along
    `axes`), of the elements where it is True only. `compiled_by_xla`
    writes the sums for XLA (see `batch_sum`).

    Returns `(count, shift, deviation, residual, variance)`: `count` is the
    number of elements reduced (a scalar without a mask, per output position
    with one), `shift` an estimate of the mean (no gradient), `deviation` =
    x - shift, `residual` the mean of the deviations of the selected
    elements, so that the mean is shift + residual, and the biased variance
    mean(deviation^2) - residual^2. An empty selection (an empty batch, or
    everything masked) has mean 0 and variance 0, as Keras' masked moments
    give; `count` tells it apart.

    Summing raw values (E[x^2] - E[x]^2) cancels catastrophically when
    |mean| >> std, and even a two-pass variance inherits the rounding of a
    float32 mean of large values (one ulp of 1e4 is 1e-3). Deviations from a
    shift close to the mean are of the order of the std, so their sums stay
    accurate, and no term of the size of |mean| is ever rounded. Without a
    mask the shift is the first element along `axes` (no pass over the
    data); with one it is the plain masked mean, whose float32 rounding only
    makes the residual a little larger than the std at worst. The gradient
    is exact: d mean/dx = 1/n and d variance/dx = 2 (x - mean)/n on the
    selected elements, 0 elsewhere.
    """
    if mask is None:
        shape = ops.shape(x)
        # A list, not a generator: torch.compile cannot trace math.prod of a
        # generator (a graph break in every training-mode call).
        count = ops.cast(math.prod([shape[a] for a in axes]), x.dtype)
        first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(len(x.shape)))
        # The sum of a single element is that element, and an empty batch gets
        # a shift of the statistics' shape (0) instead of an empty one.
        shift = ops.stop_gradient(ops.sum(x[first], axis=axes, keepdims=True))
        deviation = selected = x - shift
        divisor = ops.maximum(count, 1.0)
    else:
        count = ops.sum(ops.cast(mask, x.dtype), axis=axes, keepdims=True)
        divisor = ops.maximum(count, 1.0)
        # `where`, not a product: a masked inf or NaN must not reach the sums.
        shift = ops.stop_gradient(
            ops.sum(ops.where(mask, x, 0.0), axis=axes, keepdims=True) / divisor
        )
        deviation = x - shift
        selected = ops.where(mask, deviation, 0.0)
    residual = batch_sum(selected, axes, compiled_by_xla) / divisor
    mean_square = batch_sum(ops.square(selected), axes, compiled_by_xla) / divisor
    variance = ops.maximum(mean_square - ops.square(residual), 0.0)
    return count, shift, deviation, residual, variance


# Rows summed by the first stage of `batch_sum` under XLA.
_XLA_GROUP = 8


def batch_sum(value, axes, compiled_by_xla=False):
    """The sum of `value` over `axes` (keepdims). With `compiled_by_xla`,
    written for XLA's CPU compiler (TensorFlow 2.21's), which hands a large
    float32 sum to YNNPACK unless the summed operand is a multiply, a
    slice, a reshape, ... (`IsReduceOpOffloadedToYnn`), lowers those to a
    windowed reduction ~8x slower, and materializes the operand of any sum
    it hands over. Over leading axes (channels last), the rows are summed
    in groups of `_XLA_GROUP` first, a reduction over a short axis that
    XLA fuses with whatever computes `value`, and the partial sums (1/8 of
    the data) go to YNNPACK; the maximum with -inf in between changes no
    value (NaN included) but keeps XLA from merging the two sums back into
    one. Over other axes, the maximum alone keeps the sum off the slow
    path. On a (32, 56, 56, 64) tensor (2 cores) the sum of a product took
    46 ms as one reduction, 5.8 ms through the maximum and 2.5 ms in two
    stages, and BatchNorm's training step under XLA 20 ms instead of 120
    (lab/benchmark.py, P13); JAX 0.10's XLA runs the same step about 10%
    faster with these sums than with plain ones."""
    if not compiled_by_xla:
        return ops.sum(value, axis=axes, keepdims=True)
    ndim = len(value.shape)
    if tuple(axes) != tuple(range(len(axes))) or len(axes) == ndim:
        return ops.sum(ops.maximum(value, float("-inf")), axis=axes, keepdims=True)
    shape = ops.shape(value)
    kept = tuple(shape[len(axes):])
    rows = ops.reshape(value, (-1, *kept))
    grouped = (ops.shape(rows)[0] // _XLA_GROUP) * _XLA_GROUP
    partial = ops.sum(ops.reshape(rows[:grouped], (-1, _XLA_GROUP, *kept)), axis=1)
    total = ops.sum(ops.maximum(partial, float("-inf")), axis=0) + ops.sum(rows[grouped:], axis=0)
    return ops.reshape(total, (1,) * len(axes) + kept)


def standardized(deviation, residual, variance, gamma, beta, epsilon, shape):
    """`(outputs, inverse_std, scale)` of batch normalization from the
    pieces of `shifted_moments`: outputs = deviation * scale + (beta -
    residual * scale), scale = gamma * inverse_std, with `gamma` and `beta`
    reshaped to `shape`. Written in the deviations, so that nothing of the
    size of |mean| is rounded."""
    inverse_std = ops.rsqrt(variance + epsilon)
    scale = ops.reshape(gamma, shape) * inverse_std
    outputs = deviation * scale + (ops.reshape(beta, shape) - residual * scale)
    return outputs, inverse_std, scale


class Correction(NamedTuple):
    """A correction of the standardized batch (Batch Renormalization's):
    `function(mean, variance, *inputs) -> (r, d)` of the batch's per-channel
    moments and `inputs`, tensors read before the kernel runs (the renorm
    statistics before this batch's update). r and d carry no gradient.
    The inputs are passed to the kernels as arguments, not captured: a
    TensorFlow graph then reads them in order with their update."""

    function: Callable
    inputs: tuple = ()


def corrected(correction, gamma, beta, mean, variance, inputs=None):
    """`(scale, offset, affine_gradient)`: the per-channel scale and offset
    of the standardized batch, and the map from their gradients to those of
    `gamma` and `beta`. Without a `correction` they are gamma and beta. With
    one (a `Correction`, applied to `inputs`, by default its own), they are
    gamma * r and gamma * d + beta, and

        d_gamma = r * d_scale + d * d_offset,  d_beta = d_offset.
    """
    if correction is None:
        return gamma, beta, lambda d_scale, d_offset: (d_scale, d_offset)
    inputs = correction.inputs if inputs is None else inputs
    r, d = correction.function(mean, variance, *inputs)
    return (
        gamma * r,
        gamma * d + beta,
        lambda d_scale, d_offset: (r * d_scale + d * d_offset, d_offset),
    )


def closed_form_training(
    x, gamma, beta, epsilon, axes, shape, mask=None, correction=None, compiled_by_xla=False
):
    """Returns `(outputs, mean, variance, count)`: training-mode batch
    normalization of `x` for any rank, with batch normalization's
    closed-form gradient (`keras.ops.custom_gradient`: TensorFlow and JAX).
    Statistics over `axes` of `x`, `gamma` and `beta` reshaped to `shape`;
    with a boolean `mask` (broadcastable to `x`, of `x`'s shape along
    `axes`), statistics of the elements where it is True (every element is
    normalized with them). An empty selection has mean 0 and variance 0
    (see `shifted_moments`), and `count` 0. With a `correction` (Batch
    Renormalization's, see `corrected`), the standardized batch is scaled
    by gamma * r and offset by gamma * d + beta, from the same moments: one
    pass of the batch. `compiled_by_xla` writes the sums for XLA
    (`batch_sum`). The forward pass is the shifted-data formula; the
    backward pass is batch normalization's closed-form gradient

        dx = gamma / std * (dy - mean(dy) - x_hat * mean(dy * x_hat))

    (the same arithmetic the fused kernel's gradient does), instead of the
    chain rule through every elementwise op of the forward pass. The mean
    and variance carry no gradient: they only feed the moving statistics.
    With a mask, the means are over the n selected elements, the sums in
    them over all elements (every output depends on the statistics), and
    the two terms after dy vanish where the mask is False (those elements
    do not enter the statistics): sum(dy) / n and x_hat * sum(dy * x_hat) / n
    with the selection's x_hat.

    Both passes are written as per-channel affine maps of the shifted input
    `deviation` = x - shift (and of dy): outputs = a * deviation + c and
    dx = a * dy + b * deviation + e, with per-channel vectors a, b, c, e.
    Everything of the batch's size is then read once and never recomputed
    through x_hat, which lets XLA fuse a convolution bias's gradient (a
    reduction of dx) like any other reduction: written through x_hat, XLA
    folded the whole gradient into that reduction as a slow per-channel
    loop, and ResNet-50 (keras.applications layout, whose convolutions
    have biases) trained 10-20% slower than Keras' BatchNormalization;
    this way it is as fast (lab/benchmark.py, P1). `deviation` and the
    residual mean(deviation) are of the order of the standard deviation,
    so nothing of the size of |mean| is rounded."""

    # Values: a custom gradient must not read variables itself.
    gamma, beta = ops.convert_to_tensor(gamma), ops.convert_to_tensor(beta)
    correction_inputs = [ops.convert_to_tensor(t) for t in correction.inputs] if correction else []

    @ops.custom_gradient
    def normalize(x, gamma, beta, *correction_inputs):
        count, shift, deviation, residual, variance = shifted_moments(x, axes, mask, compiled_by_xla)
        mean = ops.reshape(shift + residual, [-1])
        scale_by, offset_by, affine_gradient = corrected(
            correction, gamma, beta, mean, ops.reshape(variance, [-1]), correction_inputs
        )
        outputs, inverse_std, scale = standardized(
            deviation, residual, variance, scale_by, offset_by, epsilon, shape
        )
        divisor = ops.maximum(count, 1.0)

        def gradient(*upstream):
            # TensorFlow passes one gradient per output, JAX their tuple.
            d_outputs = upstream[0][0] if len(upstream) == 1 else upstream[0]
            d_offset = batch_sum(d_outputs, axes, compiled_by_xla)
            # sum(dy * x_hat), with x_hat = (deviation - residual) / std.
            d_scale = inverse_std * (
                batch_sum(d_outputs * deviation, axes, compiled_by_xla) - residual * d_offset
            )
            # dx = scale * (dy - d_offset / n - x_hat * d_scale / n)
            #    = scale * dy + b * (deviation - residual) - scale * d_offset / n
            b = -scale * inverse_std * d_scale / divisor
            d_statistics = deviation * b - (scale * d_offset / divisor + b * residual)
            d_x = d_outputs * scale + selected_only(d_statistics, mask)
            d_gamma, d_beta = affine_gradient(ops.reshape(d_scale, [-1]), ops.reshape(d_offset, [-1]))
            return (d_x, d_gamma, d_beta, *(ops.zeros_like(t) for t in correction_inputs))

        return (outputs, mean, ops.reshape(variance, [-1]), ops.reshape(count, [-1])), gradient

    return normalize(x, gamma, beta, *correction_inputs)


def selected_only(value, mask):
    """`value` where `mask` is True and 0 elsewhere; `value` if there is no mask."""
    return value if mask is None else ops.where(mask, value, ops.zeros([], value.dtype))


def moments(x, axes, mask=None):
    """`(mean, variance, centered)` of `x` over `axes` (keepdims), where
    `centered` = x - mean, computed without rounding `mean` first; with a
    boolean `mask` (broadcastable to `x`), of the elements where it is True
    only (masked values, however large or non-finite, never enter a sum).
    See `shifted_moments`."""
    if mask is not None:
        mask = ops.broadcast_to(mask, ops.shape(x))
    _, shift, deviation, residual, variance = shifted_moments(x, axes, mask)
    return shift + residual, variance, deviation - residual
