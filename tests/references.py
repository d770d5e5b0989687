"""NumPy float64 references for the normalization layers, shared by the
TensorFlow-backend tests (tests/layers/) and the JAX-backend tests
(tests/jax/). No Keras, no TensorFlow: the same formula judges every
backend."""

import numpy as np


def reduction_axes(ndim, axis):
    """Every axis of an `ndim`-dimensional input but the feature `axis`."""
    return tuple(a for a in range(ndim) if a != axis % ndim)


def feature_shape(ndim, axis):
    """The shape that broadcasts a per-feature vector along `axis`."""
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def batch_norm(x, mean, variance, gamma, beta, axis, epsilon):
    """gamma * (x - mean) / sqrt(variance + epsilon) + beta, per feature."""
    shape = feature_shape(x.ndim, axis)
    mean, variance, gamma, beta = (np.reshape(v, shape) for v in (mean, variance, gamma, beta))
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def batch_moments(x, axis):
    """Mean and biased variance per feature, in float64."""
    axes = reduction_axes(x.ndim, axis)
    x64 = x.astype(np.float64)
    return x64.mean(axis=axes), x64.var(axis=axes)


def selection(mask, shape):
    """Keras' rule: the mask expanded on the last axis, broadcast to the input."""
    return np.broadcast_to(np.expand_dims(np.asarray(mask, bool), -1), shape)


def masked_moments(x, mask, axis):
    """Mean and biased variance per feature of the selected values (float64)."""
    selected = selection(mask, x.shape)
    axes = reduction_axes(x.ndim, axis)
    x = x.astype(np.float64)
    count = selected.sum(axes, keepdims=True)
    mean = np.where(selected, x, 0.0).sum(axes, keepdims=True) / count
    variance = np.where(selected, (x - mean) ** 2, 0.0).sum(axes, keepdims=True) / count
    return mean.reshape(-1), variance.reshape(-1)


def batch_norm_gradients(x, gamma, d_outputs, epsilon, axis):
    """Gradients of sum(d_outputs * BN(x)) w.r.t. x, gamma and beta, by the
    textbook formula (Ioffe & Szegedy 2015, section 3), in float64."""
    x, d_outputs = x.astype(np.float64), d_outputs.astype(np.float64)
    axes = reduction_axes(x.ndim, axis)
    shape = [x.shape[a] if a not in axes else 1 for a in range(x.ndim)]
    mean, variance = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    normalized = (x - mean) / np.sqrt(variance + epsilon)
    d_normalized = d_outputs * gamma.reshape(shape)
    count = x.size / gamma.size
    d_variance = (d_normalized * (x - mean)).sum(axes, keepdims=True) * -0.5 * (variance + epsilon) ** -1.5
    d_mean = -(d_normalized / np.sqrt(variance + epsilon)).sum(axes, keepdims=True) - 2 * d_variance * (
        x - mean
    ).mean(axes, keepdims=True)
    d_x = d_normalized / np.sqrt(variance + epsilon) + d_variance * 2 * (x - mean) / count + d_mean / count
    return d_x, (d_outputs * normalized).sum(axes), d_outputs.sum(axes)


def renorm_step(x, state, gamma, beta, axis, clipping, *, epsilon, momentum, renorm_momentum, mask=None):
    """One training step of Keras' renorm in float64: returns the output,
    the updated statistics (`state` holds "moving_mean", "moving_stddev",
    "renorm_mean" and "renorm_stddev" before the step) and which clipping
    bounds the step hit."""
    axes = reduction_axes(x.ndim, axis)
    shape = feature_shape(x.ndim, axis)
    x = x.astype(np.float64)
    selected = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask[..., None], x.shape)
    count = selected.sum(axes)
    mean = np.where(selected, x, 0).sum(axes) / count
    variance = np.where(selected, (x - mean.reshape(shape)) ** 2, 0).sum(axes) / count
    stddev = np.sqrt(variance + epsilon)
    renorm_stddev = np.maximum(state["renorm_stddev"], np.sqrt(epsilon))
    r = np.clip(stddev / renorm_stddev, clipping.get("rmin", 0), clipping.get("rmax", np.inf))
    dmax = clipping.get("dmax", np.inf)
    d = np.clip((mean - state["renorm_mean"]) / renorm_stddev, -dmax, dmax)
    standardized = (x - mean.reshape(shape)) / stddev.reshape(shape)
    outputs = (standardized * r.reshape(shape) + d.reshape(shape)) * np.reshape(gamma, shape)
    outputs += np.reshape(beta, shape)

    def follow(old, new, weight):
        return weight * old + (1 - weight) * new

    updated = {
        "renorm_mean": follow(state["renorm_mean"], mean, renorm_momentum),
        "renorm_stddev": follow(state["renorm_stddev"], stddev, renorm_momentum),
        "moving_mean": follow(state["moving_mean"], mean, momentum),
        "moving_stddev": follow(state["moving_stddev"], stddev, momentum),
    }
    updated["moving_variance"] = np.maximum(updated["moving_stddev"] ** 2 - epsilon, 0)
    clipped = {
        "rmin": (stddev / renorm_stddev < clipping.get("rmin", 0)).any(),
        "rmax": (stddev / renorm_stddev > clipping.get("rmax", np.inf)).any(),
        "dmax": (np.abs((mean - state["renorm_mean"]) / renorm_stddev) > dmax).any(),
    }
    return outputs, updated, clipped
