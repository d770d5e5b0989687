"""Training-mode batch normalization with TensorFlow's fused kernel (TF-only).

`tf.nn.fused_batch_norm` (oneDNN on CPU, cuDNN on GPU, a single HLO op under
XLA) normalizes a 4-D batch and returns its statistics in one kernel, with a
fused gradient: measurably faster than composing the formula from
elementwise ops and reductions. Two adjustments keep normzoo's guarantees:

- the input is first shifted by one of its own elements per channel. BN is
  invariant to that shift, and the kernel's statistics of the deviations stay
  accurate when |mean| >> std (the kernel's two-pass variance of raw values
  inherits the rounding of a float32 mean of large values);
- the kernel returns the Bessel-corrected variance; normzoo's moving
  variance follows the biased one, as the formula in BatchNorm's docstring
  says.
"""

import contextlib

import tensorflow as tf

from normzoo import _tf_internals, runtime
from normzoo.layers._statistics import corrected, shifted_moments, standardized

DATA_FORMATS = {3: "NHWC", 1: "NCHW"}


def batch_norm_training(x, gamma, beta, epsilon, data_format):
    """Returns `(outputs, mean, variance, count)`: x normalized with its own
    batch statistics and scaled by `gamma`, offset by `beta` (float32
    vectors), the per-channel batch mean and biased variance, and the number
    of values per channel. An empty batch has NaN statistics, and zero
    gradients where TensorFlow runs the kernel (XLA's expansion of it gives
    gamma a NaN gradient: see `in_xla_context`)."""
    spatial = (1, 2) if data_format == "NHWC" else (2, 3)
    channel_axis = 3 if data_format == "NHWC" else 1
    reduced = [a for a in range(4) if a != channel_axis]
    first = [slice(0, 1) if a != channel_axis else slice(None) for a in range(4)]
    shift = tf.stop_gradient(x[tuple(first)])
    outputs, deviation_mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
        x - shift,
        gamma,
        beta,
        epsilon=epsilon,
        data_format=data_format,
        is_training=True,
    )[:3]
    count = tf.cast(tf.shape(x)[0] * tf.reduce_prod(tf.gather(tf.shape(x), spatial)), x.dtype)
    variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
    # The sum of one element is that element, and for an empty batch (an
    # empty replica's shard) it is one value per channel, not none.
    mean = tf.reduce_sum(shift, axis=reduced) + deviation_mean
    return outputs, mean, variance, count


def compiled_when_eager(function):
    """See `_kernels.compiled_when_eager`. Not under a distribution
    strategy, whose eager replicas each need their own variables and
    context (a function traced in one replica would be reused by
    another)."""
    compiled = runtime.own_function(function, reduce_retracing=True, autograph=False)

    def call(*args):
        if tf.executing_eagerly() and not tf.distribute.has_strategy():
            return compiled(*args)
        return function(*args)

    return call


def after(tensor):
    """See `_kernels.after`."""
    if tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf.control_dependencies([tensor])


def in_xla_context():
    """True while ops are being traced for XLA: in a function compiled whole
    (`jit_compile=True`), or in a `tf.xla.experimental.jit_scope` that
    compiles its ops (how `normzoo.training` compiles a replica's step
    under MirroredStrategy on CPU). There `tf.nn.fused_batch_norm` becomes
    an HLO batch-norm op that XLA expands into generic code, slower than the
    formula composed from elementwise ops and reductions, which XLA fuses
    itself; and on an empty batch (an empty replica's shard) the expansion's
    gradient of gamma is 0 * NaN."""
    if tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    # A jit_scope whose compile_ops is a callable decides op by op: then
    # nothing is known here.
    return _tf_internals.compiled_whole(graph) or _tf_internals.jit_scope_compile_ops(graph) is True


def batch_norm_training_composed(
    x, gamma, beta, epsilon, axes, shape, mask=None, correction=None
):
    """Returns `(outputs, mean, variance, count)` as `batch_norm_training`
    does, for any rank: statistics over `axes` of `x`, `gamma` and `beta`
    reshaped to `shape`; with a boolean `mask` (broadcastable to `x`, of
    `x`'s shape along `axes`), statistics of the elements where it is True
    (every element is normalized with them). An empty selection has mean 0
    and variance 0 (see `shifted_moments`), and `count` 0. With a
    `correction` (Batch Renormalization's, see `corrected`), the
    standardized batch is scaled by gamma * r and offset by gamma * d +
    beta, from the same moments: one pass of the batch. The forward pass
    is the shifted-data formula; the backward pass is batch normalization's
    closed-form gradient

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
    gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
    correction_inputs = [tf.convert_to_tensor(t) for t in correction.inputs] if correction else []

    @tf.custom_gradient
    def normalize(x, gamma, beta, *correction_inputs):
        count, shift, deviation, residual, variance = shifted_moments(x, axes, mask)
        mean = tf.reshape(shift + residual, [-1])
        scale_by, offset_by, affine_gradient = corrected(
            correction, gamma, beta, mean, tf.reshape(variance, [-1]), correction_inputs
        )
        outputs, inverse_std, scale = standardized(
            deviation, residual, variance, scale_by, offset_by, epsilon, shape
        )
        divisor = tf.maximum(count, 1.0)

        def gradient(d_outputs, d_mean, d_variance, d_count):
            del d_mean, d_variance, d_count
            d_offset = tf.reduce_sum(d_outputs, axes, keepdims=True)
            # sum(dy * x_hat), with x_hat = (deviation - residual) / std.
            d_scale = inverse_std * (
                tf.reduce_sum(d_outputs * deviation, axes, keepdims=True) - residual * d_offset
            )
            # dx = scale * (dy - d_offset / n - x_hat * d_scale / n)
            #    = scale * dy + b * (deviation - residual) - scale * d_offset / n
            b = -scale * inverse_std * d_scale / divisor
            d_statistics = deviation * b - (scale * d_offset / divisor + b * residual)
            d_x = d_outputs * scale + selected_only(d_statistics, mask)
            d_gamma, d_beta = affine_gradient(tf.reshape(d_scale, [-1]), tf.reshape(d_offset, [-1]))
            return (d_x, d_gamma, d_beta, *(tf.zeros_like(t) for t in correction_inputs))

        return (outputs, mean, tf.reshape(variance, [-1]), tf.reshape(count, [-1])), gradient

    return normalize(x, gamma, beta, *correction_inputs)


def selected_only(value, mask):
    """`value` where `mask` is True and 0 elsewhere; `value` if there is no mask."""
    return value if mask is None else tf.where(mask, value, tf.zeros([], value.dtype))
