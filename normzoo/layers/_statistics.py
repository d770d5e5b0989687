"""Helpers shared by the normalization layers: dtypes, axes and moments."""

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


def shifted_moments(x, axes):
    """Moments of `x` over `axes` (keepdims) by the shifted-data algorithm.

    Returns `(shift, deviation, residual, variance)`: `shift` is one element
    of `x` per output position (the first along `axes`, no gradient),
    `deviation` = x - shift, `residual` = mean(deviation), so that the mean is
    shift + residual, and the biased variance mean(deviation^2) - residual^2.

    Summing raw values (E[x^2] - E[x]^2) cancels catastrophically when
    |mean| >> std, and even a two-pass variance inherits the rounding of a
    float32 mean of large values (one ulp of 1e4 is 1e-3). Deviations from
    an element of the data are of the order of the std, so their sums stay
    accurate, and no term of the size of |mean| is ever rounded. The
    gradient is exact: d mean/dx = 1/n and d variance/dx = 2 (x - mean)/n.
    """
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(len(x.shape)))
    # The mean of a single element is that element; it also gives an empty
    # batch a shift of the statistics' shape (NaN) instead of an empty one.
    shift = ops.stop_gradient(ops.mean(x[first], axis=axes, keepdims=True))
    deviation = x - shift
    residual = ops.mean(deviation, axis=axes, keepdims=True)
    mean_square = ops.mean(ops.square(deviation), axis=axes, keepdims=True)
    variance = ops.maximum(mean_square - ops.square(residual), 0.0)
    return shift, deviation, residual, variance


def moments(x, axes):
    """`(mean, variance, centered)` of `x` over `axes` (keepdims), where
    `centered` = x - mean, computed without rounding `mean` first; see
    `shifted_moments`."""
    shift, deviation, residual, variance = shifted_moments(x, axes)
    return shift + residual, variance, deviation - residual


def masked_moments(x, axes, counted):
    """`(mean, variance, centered)` like `moments`, taken over only the
    elements where the boolean `counted` (broadcastable to `x`) is True;
    every group of elements reduced together must hold at least one.

    Elements left out never enter a sum, whatever values they hold. The
    shift is the mean of the counted elements, so that it lies near the data
    however far off the excluded elements are; its rounding is corrected by
    the residual as in `shifted_moments`.
    """
    counted = ops.broadcast_to(counted, ops.shape(x))
    count = ops.sum(ops.cast(counted, x.dtype), axis=axes, keepdims=True)

    def average(values):
        return ops.sum(ops.where(counted, values, 0.0), axis=axes, keepdims=True) / count

    shift = ops.stop_gradient(average(x))
    deviation = x - shift
    residual = average(deviation)
    variance = ops.maximum(average(ops.square(deviation)) - ops.square(residual), 0.0)
    return shift + residual, variance, deviation - residual
