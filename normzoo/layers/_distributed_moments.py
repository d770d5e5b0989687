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
|mean| >> std nor assumes equal shard sizes (with a mask, the counts are
those of the selected values, per channel). `batch_norm_training`
normalizes with them and has batch normalization's closed-form gradient,
whose two global sums per channel take one all-reduce.

An unsynchronized BatchNorm communicates nothing in training; its
per-replica moving statistics drift apart, and `replica_mean` gives every
replica their average to normalize with in inference.
"""

import tensorflow as tf

from normzoo import _tf_internals
from normzoo.layers._statistics import corrected, selected_only, shifted_moments


def sync_replica_context():
    """The replica context to synchronize over, or None when there is nothing
    to synchronize (no strategy, a single replica, or cross-replica code)."""
    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def _outside_xla_clusters(operation):
    # On CPU, XLA cannot compile collectives (measured with TF 2.21), nor
    # read a variable of another device: when a training step compiles the
    # replica's forward/backward with jit_scope, such ops must stay outside
    # the compiled cluster. Where a whole function is compiled with
    # jit_compile=True (GPU/TPU), this scope is moot.
    if tf.executing_eagerly():
        return operation()
    with tf.xla.experimental.jit_scope(compile_ops=False):
        return operation()


def _collective(context, collective):
    _refuse_whole_function_xla_without_collectives(context)
    return _outside_xla_clusters(collective)


def _compiled_whole():
    """True while tracing a function that XLA compiles whole (jit_compile=True,
    or a TPU computation); not in a jit_scope."""
    return _tf_internals.compiled_whole(tf.compat.v1.get_default_graph())


def _refuse_whole_function_xla_without_collectives(context):
    # Where XLA compiles a replica's function whole (jit_compile=True, e.g.
    # Keras' compile(jit_compile=True)) on devices whose collectives it cannot
    # compile (CPU), the mirrored strategies' collectives go through
    # merge_call, which fails there with a message that names neither the
    # layer nor the fix. (TPUStrategy compiles every replica function with
    # XLA and handles its collectives itself.)
    strategy = context.strategy
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    if isinstance(strategy, mirrored) and _compiled_whole() and _tf_internals.uses_merge_call(strategy):
        raise RuntimeError(
            "BatchNorm needs an all-reduce across the replicas here (to normalize with "
            "the average of the replicas' moving statistics, or, with synchronized=True, "
            "with the global batch's statistics), and XLA compiles this replica "
            "function whole (jit_compile=True) on devices where it cannot compile "
            "collectives (CPU). Run it without XLA: model.compile(jit_compile=False), "
            "Keras' default under a distribution strategy, or a tf.function without "
            "jit_compile around strategy.run (a custom loop may compile the rest of "
            "the replica's step with tf.xla.experimental.jit_scope, as "
            "normzoo.training does)."
        )


def _gather(context, value):
    return _collective(context, lambda: context.all_gather(value, axis=0))


def _sum(context, value):
    return _collective(context, lambda: context.all_reduce(tf.distribute.ReduceOp.SUM, value))


def replica_mean(context, variables):
    """The mean over the replicas of `context` of each of `variables`
    (per-replica variables, such as BatchNorm's on-read moving statistics),
    the same on every replica: the value a cross-replica read, and so a
    checkpoint, gives.

    Where every replica's copy is in this process (MirroredStrategy), each
    replica reads them all and adds them in the same order: no collective.
    Elsewhere (other workers' copies under MultiWorkerMirroredStrategy, or a
    function XLA compiles whole, which cannot read another device's
    variable), one all-reduce of the replica's own copies packed into one
    vector. Neither waits on the batch, so they run beside the layers
    before. For ResNet-20's 19 BatchNorm layers on 2 CPU replicas the reads
    cost 0.5 ms, the all-reduces (ordered one after another) 8.6 ms, beside
    an inference step of 195 ms (lab/results/replica_statistics.py)."""
    strategy = context.strategy
    copies = [strategy.experimental_local_results(_distributed_variable(v)) for v in variables]
    if _compiled_whole() or any(len(c) != context.num_replicas_in_sync for c in copies):
        return _all_reduce_mean(context, variables)

    def average():
        return [tf.add_n([tf.convert_to_tensor(c) for c in cs]) / len(cs) for cs in copies]

    return _outside_xla_clusters(average)


def _distributed_variable(variable):
    # A Keras variable holds the tf.distribute variable as its value.
    return getattr(variable, "value", variable)


def _all_reduce_mean(context, values):
    """The mean over the replicas of `context` of each tensor of `values`
    (each replica passes its own), in one all-reduce of them all packed into
    one vector."""
    tensors = [tf.convert_to_tensor(v) for v in values]
    sizes = [t.shape.num_elements() for t in tensors]
    packed = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
    mean = _collective(context, lambda: context.all_reduce(tf.distribute.ReduceOp.MEAN, packed))
    return [tf.reshape(m, tf.shape(t)) for m, t in zip(tf.split(mean, sizes), tensors)]


def global_moments(x, axes, context, mask=None):
    """`(count, mean, variance, centered)` of the global batch over `axes`
    (keepdims), where `count` is the global number of values reduced (a
    scalar, or per channel with a mask) and `centered` = x - mean for this
    replica's shard `x`. With a boolean `mask` (broadcastable to `x`, of
    `x`'s shape along `axes`), of the selected values only.

    Shards may differ in size (each contributes in proportion to its count;
    an empty or fully masked shard contributes nothing, and a global batch
    without any value has mean 0 and variance 0, as on one device).
    """
    count, shift, deviation, residual, variance = shifted_moments(x, axes, mask)
    stat_shape = tf.shape(residual)
    counts_size = count.shape.num_elements()
    packed = tf.concat(
        [tf.reshape(t, [-1]) for t in (count, shift, residual, count * variance)], axis=0
    )
    gathered = _gather(context, packed[tf.newaxis])
    counts = gathered[:, :counts_size]
    shifts, residuals, m2s = tf.split(gathered[:, counts_size:], 3, axis=1)
    total = tf.reduce_sum(counts, axis=0)
    divisor = tf.maximum(total, 1.0)
    # Combine in offsets from one reference near every shard's mean: the
    # shifts then subtract exactly, and neither the mean nor M2 adds terms of
    # size |mean| whose float32 rounding would swamp a small variance.
    reference = tf.reduce_sum(counts * shifts, axis=0) / divisor
    offsets = (shifts - reference) + residuals
    offset = tf.reduce_sum(counts * offsets, axis=0) / divisor
    m2 = tf.reduce_sum(m2s, axis=0) + tf.reduce_sum(counts * tf.square(offsets - offset), axis=0)
    mean = tf.reshape(reference + offset, stat_shape)
    # x - mean = (x - shift) + (shift - reference) - offset, all small terms.
    shift_from_reference = shift - tf.reshape(reference, stat_shape)
    centered = deviation + shift_from_reference - tf.reshape(offset, stat_shape)
    total = tf.reshape(total, tf.shape(count))
    return total, mean, tf.reshape(m2 / divisor, stat_shape), centered


def batch_norm_training(x, gamma, beta, epsilon, axes, shape, context, mask=None, correction=None):
    """Returns `(outputs, mean, variance, count)`: this replica's shard `x`
    normalized with the global batch's statistics (over `axes`) and scaled
    by `gamma`, offset by `beta` (float32 vectors, reshaped to `shape`), the
    global per-channel mean and biased variance, and the global count of
    values. With a boolean `mask`, the statistics are those of the selected
    values of every shard, and with a `correction` (Batch
    Renormalization's) r and d come from the global moments (see
    `_fused.batch_norm_training_composed`).

    The backward pass is batch normalization's closed-form gradient over the
    global batch of N elements per channel,

        dx = gamma / std * (dy - S(dy) / N - x_hat * S(dy * x_hat) / N)

    where S sums over every replica: one all-reduce of the two sums per
    channel (with a mask, the two terms after dy vanish where it is False).
    Differentiating the forward pass op by op instead (through the
    all-gather and every elementwise op) cost ResNet-20 on 2 CPU replicas
    about 19% of its step time against unsynchronized BatchNorm, growing
    with the batch (lab/benchmark.py, P4). The gradients of gamma and
    beta are this replica's own sums, which the strategy adds up like any
    other gradient. The mean and variance carry no gradient: they only feed
    the moving statistics."""

    # Values: a custom gradient must not read variables itself.
    gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
    correction_inputs = [tf.convert_to_tensor(t) for t in correction.inputs] if correction else []

    @tf.custom_gradient
    def normalize(x, gamma, beta, *correction_inputs):
        count, mean, variance, centered = global_moments(x, axes, context, mask)
        scale_by, offset_by, affine_gradient = corrected(
            correction, gamma, beta, tf.reshape(mean, [-1]), tf.reshape(variance, [-1]),
            correction_inputs,
        )
        inverse_std = tf.math.rsqrt(variance + epsilon)
        scale = tf.reshape(scale_by, shape) * inverse_std
        outputs = centered * scale + tf.reshape(offset_by, shape)
        divisor = tf.maximum(count, 1.0)

        def gradient(d_outputs, d_mean, d_variance, d_count):
            del d_mean, d_variance, d_count
            d_beta = tf.reduce_sum(d_outputs, axes, keepdims=True)
            d_centered = tf.reduce_sum(d_outputs * centered, axes, keepdims=True)
            total = _sum(
                context, tf.concat([tf.reshape(d_beta, [-1]), tf.reshape(d_centered, [-1])], 0)
            )
            global_d_beta, global_d_centered = (
                tf.reshape(t, tf.shape(d_beta)) for t in tf.split(total, 2)
            )
            # dx = scale * dy + b * centered + e, per-channel b and e.
            b = -scale * tf.square(inverse_std) * global_d_centered / divisor
            d_statistics = centered * b - scale * global_d_beta / divisor
            d_x = d_outputs * scale + selected_only(d_statistics, mask)
            d_scale = inverse_std * d_centered
            d_gamma, d_beta = affine_gradient(tf.reshape(d_scale, [-1]), tf.reshape(d_beta, [-1]))
            return (d_x, d_gamma, d_beta, *(tf.zeros_like(t) for t in correction_inputs))

        return (
            outputs,
            tf.reshape(mean, [-1]),
            tf.reshape(variance, [-1]),
            tf.reshape(count, [-1]),
        ), gradient

    return normalize(x, gamma, beta, *correction_inputs)
