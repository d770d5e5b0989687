"""BatchNorm's training-mode kernel and replica statistics, for the Keras
backend of this process.

The layer asks this module, never TensorFlow, so that it runs on every
backend; the backend-specific fast paths live in modules named for their
backend and are imported only where that backend runs:

- TensorFlow (`_fused.py`, `_distributed_moments.py`): the fused kernel
  for 4-D input; the composed formula with batch normalization's
  closed-form gradient (`_statistics.closed_form_training`) for other
  ranks, masks and XLA; the global batch's statistics under a
  `tf.distribute` strategy; the replica average of the moving statistics.
- JAX: the same closed form, its sums written for XLA, which compiles
  every JAX op. Under jax.jit its gradient follows the float64 textbook
  formula at mean 1e4, std 1e-2 (tests/backend_suite/layers.py); benchmarks
  P10 and P13 compare its training step with Keras' own
  BatchNormalization under JAX.
- PyTorch: the composed formula (`composed_training`), which PyTorch
  differentiates itself.
- JAX and PyTorch have no strategy to synchronize over.
"""

import contextlib

from keras import ops

from normzoo.backends import BACKEND, TENSORFLOW
from normzoo.layers._statistics import (
    closed_form_training,
    corrected,
    shifted_moments,
    standardized,
)

if TENSORFLOW:
    from normzoo.layers import _distributed_moments, _fused


def fused_data_format(feature_axis, ndim):
    """The data format in which the backend's fused kernel takes an input of
    rank `ndim` with features on `feature_axis`, or None where it has none
    (the kernel serves 4-D channels-last or channels-first input)."""
    if not TENSORFLOW or ndim != 4:
        return None
    return _fused.DATA_FORMATS.get(feature_axis)


def batch_norm_training(
    x, gamma, beta, epsilon, axes, shape, *, mask, data_format, context, correction=None
):
    """Returns `(outputs, mean, variance, count)`: `x` normalized with its
    batch statistics over `axes` (those of the global batch when `context`,
    a replica context from `sync_replica_context`, is given), scaled by
    `gamma` and offset by `beta` (float32 vectors reshaped to `shape`); the
    per-channel batch mean and biased variance (no gradient), and the
    number of values per channel. With a boolean `mask` (broadcast along
    `axes`), statistics of the selected values only. `data_format` is
    `fused_data_format`'s answer for this input. A `correction` (a
    `_statistics.Correction`: r and d of the batch's per-channel moments
    and the renorm statistics, without gradient), scales the
    standardized batch by gamma * r and offsets it by gamma * d + beta;
    the moments are computed once, and the fused kernel (which returns
    them only after normalizing) is not used."""
    if context is not None:
        return _distributed_moments.batch_norm_training(
            x, gamma, beta, epsilon, axes, shape, context, mask, correction
        )
    if BACKEND == "jax":
        return closed_form_training(
            x, gamma, beta, epsilon, axes, shape, mask, correction, compiled_by_xla=True
        )
    if not TENSORFLOW:
        return composed_training(x, gamma, beta, epsilon, axes, shape, mask, correction)
    if data_format and mask is None and correction is None and not _fused.in_xla_context():
        return _fused.batch_norm_training(x, gamma, beta, epsilon, data_format)
    return _fused.batch_norm_training_composed(
        x, gamma, beta, epsilon, axes, shape, mask, correction
    )


def composed_training(x, gamma, beta, epsilon, axes, shape, mask=None, correction=None):
    """`batch_norm_training` as a formula of `keras.ops`, differentiated by
    the backend: the shifted-data moments and the standardization in
    deviations (`shifted_moments`, `standardized`), accurate when
    |mean| >> std. An empty selection has mean 0, variance 0 and count 0."""
    count, shift, deviation, residual, variance = shifted_moments(x, axes, mask)
    mean = ops.stop_gradient(ops.reshape(shift + residual, [-1]))
    flat_variance = ops.stop_gradient(ops.reshape(variance, [-1]))
    # The map of gradients is the chain rule's here: r and d carry none.
    scale_by, offset_by, _ = corrected(correction, gamma, beta, mean, flat_variance)
    outputs, _, _ = standardized(deviation, residual, variance, scale_by, offset_by, epsilon, shape)
    return outputs, mean, flat_variance, ops.reshape(count, [-1])


def compiled_when_eager(function):
    """`function`, run as one compiled call where it is called eagerly on
    TensorFlow (`tf.function`, traced once per input signature): its few
    dozen small ops would otherwise each pay eager dispatch, which for a
    training-mode BatchNorm costs more than its arithmetic at small sizes.
    Inside a traced function, and on other backends, `function` runs as
    is."""
    if not TENSORFLOW:
        return function
    return _fused.compiled_when_eager(function)


def after(tensor):
    """A context in which the ops created run after `tensor` is computed
    (in a TensorFlow graph; elsewhere ops run in order anyway)."""
    if not TENSORFLOW:
        return contextlib.nullcontext()
    return _fused.after(tensor)


def sync_replica_context():
    """The `tf.distribute` replica context to synchronize over, or None when
    there is nothing to synchronize (another backend, no strategy, a
    single replica, or cross-replica code)."""
    return _distributed_moments.sync_replica_context() if TENSORFLOW else None


def replica_mean(context, variables):
    """The mean over the replicas of `context` of each of `variables`
    (see `_distributed_moments.replica_mean`)."""
    return _distributed_moments.replica_mean(context, variables)
