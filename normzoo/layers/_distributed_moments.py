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
|mean| >> std nor assumes equal shard sizes. The all-gather's gradient is
defined by TensorFlow (an all-reduce of the upstream gradient), so gradients
flow to every replica's inputs.
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


def _gather(context, value):
    # On CPU, XLA cannot compile collectives (measured, see DESIGN.md): when a
    # training step compiles the replica's forward/backward with jit_scope, the
    # collective must stay outside the compiled cluster. Where a whole
    # function is compiled with jit_compile=True (GPU/TPU), this scope is moot.
    if tf.executing_eagerly():
        return context.all_gather(value, axis=0)
    with tf.xla.experimental.jit_scope(compile_ops=False):
        return context.all_gather(value, axis=0)


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
