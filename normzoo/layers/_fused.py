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
from normzoo.layers._statistics import closed_form_training

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
    """`_statistics.closed_form_training` (its sums written for XLA while
    ops are traced for XLA, see `in_xla_context`): for other ranks, masks,
    renorm and XLA."""
    return closed_form_training(
        x, gamma, beta, epsilon, axes, shape, mask, correction, compiled_by_xla=in_xla_context()
    )
