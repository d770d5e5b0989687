"""Global-batch moments under tf.distribute (TensorFlow-only).

Synchronized BatchNorm needs the mean and variance of the global batch. Each
replica reduces its own shard to (count, mean, M2) per channel, where M2 is the
sum of squared deviations from the shard's own mean, and a single collective
(an all-gather of that small vector) gives every replica every shard's triple.
They are combined with Chan et al.'s parallel formula:

    mean = sum_r n_r * mean_r / N
    M2   = sum_r M2_r + sum_r n_r * (mean_r - mean)^2

which, unlike the sum / sum-of-squares all-reduce Keras uses (three
all-reduces, then E[x^2] - E[x]^2), neither cancels catastrophically when
|mean| >> std nor assumes equal shard sizes. The all-gather's gradient is
defined by TensorFlow (an all-reduce of the upstream gradient), so gradients
flow to every replica's inputs.
"""

import tensorflow as tf

from normzoo.layers._statistics import two_pass_moments


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
    """Mean and biased variance of the global batch over `axes` (keepdims).

    `x` is this replica's shard; shards may differ in size (each contributes
    in proportion to its element count, an empty shard contributes nothing).
    """
    local_mean, local_variance = two_pass_moments(x, axes)
    stat_shape = tf.shape(local_mean)
    count = tf.cast(tf.size(x) // tf.maximum(tf.size(local_mean), 1), x.dtype)
    # An empty shard has NaN moments; weight zero must not turn them into 0*NaN.
    local_mean = tf.where(count > 0, local_mean, tf.zeros_like(local_mean))
    local_variance = tf.where(count > 0, local_variance, tf.zeros_like(local_variance))
    packed = tf.concat(
        [tf.reshape(count, [1]), tf.reshape(local_mean, [-1]), tf.reshape(local_variance * count, [-1])],
        axis=0,
    )
    gathered = _gather(context, packed[tf.newaxis])
    counts = gathered[:, :1]
    means, m2s = tf.split(gathered[:, 1:], 2, axis=1)
    total = tf.reduce_sum(counts)
    mean = tf.reduce_sum(counts * means, axis=0) / total
    m2 = tf.reduce_sum(m2s, axis=0) + tf.reduce_sum(counts * tf.square(means - mean), axis=0)
    return tf.reshape(mean, stat_shape), tf.reshape(m2 / total, stat_shape)
