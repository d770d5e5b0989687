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

import tensorflow as tf

DATA_FORMATS = {3: "NHWC", 1: "NCHW"}


def batch_norm_training(x, gamma, beta, epsilon, data_format):
    """Returns `(outputs, mean, variance)`: x normalized with its own batch
    statistics and scaled by `gamma`, offset by `beta` (float32 vectors), and
    the per-channel batch mean and biased variance."""
    spatial = (1, 2) if data_format == "NHWC" else (2, 3)
    channel_axis = 3 if data_format == "NHWC" else 1
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
    return outputs, tf.reshape(shift, [-1]) + deviation_mean, variance
