"""Global-batch moments under tf.distribute (TensorFlow-only).

Synchronized BatchNorm needs the mean and variance of the global batch. Each
replica reduces its own shard to (count, shift, residual, M2) per channel
(`normzoo.layers._statistics.shifted_moments`: the mean is shift + residual,
M2 the sum of squared deviations from it), and a single collective (an
all-gather of that small vector) gives every replica every shard's
statistics. They are combined with Chan et al.'s parallel formula:

    mean = sum_r n_r * mean_r / N
    M2   = sum_r M2_r + sum_r n_r * (mean_r - mean)^2

which, unlike the sum / sum-of-squares all-reduce Keras uses (three
all-reduces, then E[x^2] - E[x]^2), neither cancels catastrophically when
|mean| >> std nor assumes equal shard sizes. `batch_norm_training`
normalizes with them and has batch normalization's closed-form gradient,
whose two global sums per channel take one all-reduce.
"""

import tensorflow as tf

from normzoo.layers._statistics import shifted_moments


def sync_replica_context():
    """The replica context to synchronize over, or None when there is nothing
    to synchronize (no strategy, a single replica, or cross-replica code)."""
    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def _outside_xla_clusters(collective):
    # On CPU, XLA cannot compile collectives (measured, see DESIGN.md): when a
    # training step compiles the replica's forward/backward with jit_scope, the
    # collective must stay outside the compiled cluster. Where a whole
    # function is compiled with jit_compile=True (GPU/TPU), this scope is moot.
    if tf.executing_eagerly():
        return collective()
    with tf.xla.experimental.jit_scope(compile_ops=False):
        return collective()


def _gather(context, value):
    return _outside_xla_clusters(lambda: context.all_gather(value, axis=0))


def _sum(context, value):
    return _outside_xla_clusters(lambda: context.all_reduce(tf.distribute.ReduceOp.SUM, value))


def global_moments(x, axes, context):
    """`(mean, variance, centered)` of the global batch over `axes` (keepdims),
    where `centered` = x - mean for this replica's shard `x`.

    Shards may differ in size (each contributes in proportion to its element
    count; an empty shard contributes nothing).
    """
    shift, deviation, residual, variance = shifted_moments(x, axes)
    count = tf.cast(tf.size(x) // tf.maximum(tf.size(residual), 1), x.dtype)
    stat_shape = tf.shape(residual)
    # An empty shard has NaN moments; weight zero must not turn them into 0*NaN.
    shift, residual, m2 = (
        tf.where(count > 0, t, tf.zeros_like(t)) for t in (shift, residual, count * variance)
    )
    packed = tf.concat(
        [tf.reshape(count, [1])] + [tf.reshape(t, [-1]) for t in (shift, residual, m2)], axis=0
    )
    gathered = _gather(context, packed[tf.newaxis])
    counts = gathered[:, :1]
    shifts, residuals, m2s = tf.split(gathered[:, 1:], 3, axis=1)
    total = tf.reduce_sum(counts)
    # Combine in offsets from one reference near every shard's mean: the
    # shifts then subtract exactly, and neither the mean nor M2 adds terms of
    # size |mean| whose float32 rounding would swamp a small variance.
    reference = tf.reduce_sum(counts * shifts, axis=0) / total
    offsets = (shifts - reference) + residuals
    offset = tf.reduce_sum(counts * offsets, axis=0) / total
    m2 = tf.reduce_sum(m2s, axis=0) + tf.reduce_sum(counts * tf.square(offsets - offset), axis=0)
    mean = tf.reshape(reference + offset, stat_shape)
    # x - mean = (x - shift) + (shift - reference) - offset, all small terms.
    shift_from_reference = shift - tf.reshape(reference, stat_shape)
    centered = deviation + shift_from_reference - tf.reshape(offset, stat_shape)
    return mean, tf.reshape(m2 / total, stat_shape), centered


def batch_norm_training(x, gamma, beta, epsilon, axes, shape, context):
    """Returns `(outputs, mean, variance)`: this replica's shard `x`
    normalized with the global batch's statistics (over `axes`) and scaled by
    `gamma`, offset by `beta` (float32 vectors, reshaped to `shape`), and the
    global per-channel mean and biased variance.

    The backward pass is batch normalization's closed-form gradient over the
    global batch of N elements per channel,

        dx = gamma / std * (dy - S(dy) / N - x_hat * S(dy * x_hat) / N)

    where S sums over every replica: one all-reduce of the two sums per
    channel. Differentiating the forward pass op by op instead (through the
    all-gather and every elementwise op) cost ResNet-20 on 2 CPU replicas
    about 19% of its step time against unsynchronized BatchNorm, growing
    with the batch (scripts/benchmark.py, P4). The gradients of gamma and
    beta are this replica's own sums, which the strategy adds up like any
    other gradient. The mean and variance carry no gradient: they only feed
    the moving statistics."""

    # Values: a custom gradient must not read variables itself.
    gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        mean, variance, centered = global_moments(x, axes, context)
        inverse_std = tf.math.rsqrt(variance + epsilon)
        scale = tf.reshape(gamma, shape) * inverse_std
        outputs = centered * scale + tf.reshape(beta, shape)

        def gradient(d_outputs, d_mean, d_variance):
            del d_mean, d_variance
            d_beta = tf.reduce_sum(d_outputs, axes, keepdims=True)
            d_centered = tf.reduce_sum(d_outputs * centered, axes, keepdims=True)
            count = tf.cast(tf.size(x) // tf.size(gamma), x.dtype)
            total = _sum(context, tf.concat(
                [tf.reshape(count, [1]), tf.reshape(d_beta, [-1]), tf.reshape(d_centered, [-1])], 0
            ))
            count = total[0]
            global_d_beta, global_d_centered = (
                tf.reshape(t, tf.shape(d_beta)) for t in tf.split(total[1:], 2)
            )
            # dx = scale * dy + b * centered + e, per-channel b and e.
            b = -scale * tf.square(inverse_std) * global_d_centered / count
            d_x = d_outputs * scale + centered * b - scale * global_d_beta / count
            d_gamma = inverse_std * d_centered
            return d_x, tf.reshape(d_gamma, [-1]), tf.reshape(d_beta, [-1])

        return (outputs, tf.reshape(mean, [-1]), tf.reshape(variance, [-1])), gradient

    return normalize(x, gamma, beta)
