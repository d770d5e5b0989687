"""Helpers shared by the normalization layers: dtypes, axes and moments."""

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


def shifted_moments(x, axes, mask=None):
    """Moments of `x` over `axes` (keepdims) by the shifted-data algorithm;
    with a boolean `mask` (broadcastable to `x`, of `x`'s shape along
    `axes`), of the elements where it is True only.

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
    residual = ops.sum(selected, axis=axes, keepdims=True) / divisor
    mean_square = ops.sum(ops.square(selected), axis=axes, keepdims=True) / divisor
    variance = ops.maximum(mean_square - ops.square(residual), 0.0)
    return count, shift, deviation, residual, variance


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
