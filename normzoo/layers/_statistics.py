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


def normalize_axes(axis, ndim, argument="axis"):
    """Returns `axis` (an int or a sequence of ints) as a sorted tuple of
    non-negative axes of an `ndim`-dimensional input, or raises ValueError."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes:
        raise ValueError(f"`{argument}` must name at least one axis; got {axis!r}.")
    normalized = []
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(
                f"`{argument}`={axis!r} is out of range for an input of rank "
                f"{ndim}: each axis must be an int in [{-ndim}, {ndim - 1}]."
            )
        normalized.append(a % ndim)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"`{argument}`={axis!r} names the same axis twice.")
    return tuple(sorted(normalized))


def broadcast_shape(input_shape, kept_axes):
    """Shape that broadcasts a per-`kept_axes` tensor against the input."""
    return [input_shape[a] if a in kept_axes else 1 for a in range(len(input_shape))]


def two_pass_moments(x, axes):
    """Mean and biased variance of `x` over `axes`, keeping dims.

    The variance is the mean squared deviation from the mean (two passes), not
    E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std and can
    come out negative. The deviation is taken from the mean with its gradient
    stopped: the derivative of sum((x - m)^2) with respect to m is zero at the
    mean, so the gradient is unchanged and the backward pass is cheaper.
    """
    mean = ops.mean(x, axis=axes, keepdims=True)
    deviation = x - ops.stop_gradient(mean)
    variance = ops.mean(ops.square(deviation), axis=axes, keepdims=True)
    return mean, variance
