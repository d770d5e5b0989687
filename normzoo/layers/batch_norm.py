"""Batch normalization that gets fine-tuning and distribution right."""

import keras
from keras import initializers, ops

from normzoo.layers import _distributed_moments, _fused
from normzoo.layers._affine import AffineNormalization
from normzoo.layers._statistics import (
    broadcast_shape,
    normalize_axes,
    statistics_dtype,
)


@keras.saving.register_keras_serializable(package="normzoo")
class BatchNorm(AffineNormalization):
    """Batch normalization (Ioffe & Szegedy, 2015).

    Normalizes each feature (each channel of an image tensor) with statistics
    taken over every other axis:

        y = gamma * (x - mean) / sqrt(variance + epsilon) + beta

    In training, `mean` and `variance` are the statistics of the current batch
    (the variance is biased, divided by the element count) and the moving
    statistics follow them:

        moving_mean     <- momentum * moving_mean     + (1 - momentum) * mean
        moving_variance <- momentum * moving_variance + (1 - momentum) * variance

    In inference the moving statistics are used, so a sample's output does not
    depend on the rest of its batch.

    Differences from `keras.layers.BatchNormalization` that a user may rely on:

    - `frozen_stats=True` is the fine-tuning mode: the moving statistics are
      used even when `training=True` and never change, while gamma and beta
      keep learning (their gradient is that of the fixed affine map). This is
      what a pretrained network wants when fine-tuned on small or
      single-class batches.
    - The batch statistics are computed from deviations from one element of
      the batch (no E[x^2] - E[x]^2 cancellation, no rounding of a large
      mean), so the variance is accurate when |mean| >> std and never
      negative.
    - Training uses TensorFlow's fused kernel for 4-D input; for other
      ranks, inside a function compiled whole by XLA (`jit_compile=True`)
      and when synchronized, the formula with its closed-form gradient
      (which XLA fuses better than its own batch-norm op, and which a
      synchronized layer gets with one collective each way).
    - A channel whose batch mean or variance is not finite leaves its moving
      statistics unchanged.
    - A training batch of one example is normalized over its spatial
      positions (an image), which is well defined. With one value per
      channel (a dense input, or a 1x1 image) the variance is 0: the output
      is `beta`, the gradients are finite (zero for the input and gamma) and
      the moving variance decays towards 0. Use `frozen_stats=True` or
      `LayerNorm` to train on such batches.
    - `synchronized=True` gathers the global batch's statistics with a single
      collective per call (Keras uses three all-reduces) and one all-reduce
      in the backward pass, exact also when replicas hold batches of
      different sizes.
    - Under a distribution strategy the moving statistics are kept per replica
      and aggregated by mean on read: what is read in cross-replica code, and
      so what checkpoints and weight files hold, is the average over replicas
      (with `synchronized=False` Keras saves one replica's statistics only).
    - Under a float16/bfloat16 (mixed) precision policy the statistics, gamma
      and beta are float32 variables and the arithmetic is float32; the output
      is in the layer's compute dtype.

    Args:
        axis: Integer, the feature axis: -1 for channels-last (NHWC) input,
            1 for channels-first (NCHW).
        momentum: Momentum of the moving averages.
        epsilon: Small float added to the variance to avoid dividing by zero.
        center: If True, add the learned offset `beta`.
        scale: If True, multiply by the learned scale `gamma`.
        synchronized: If True, under a `tf.distribute` strategy with several
            replicas, normalize with the statistics of the global batch.
            Without a strategy this is ordinary batch normalization.
        frozen_stats: If True, always normalize with the moving statistics and
            never update them, in training too. May be changed after
            construction; as with `trainable`, call `model.compile()` again
            afterwards so that Keras retraces its training function.
        beta_initializer, gamma_initializer: Initializers of beta and gamma.
        moving_mean_initializer, moving_variance_initializer: Initializers of
            the moving statistics.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of any rank >= 2.
        training: Python boolean. True uses and updates batch statistics
            (unless `frozen_stats` is set or the layer is not trainable);
            False or None uses the moving statistics.

    About setting `layer.trainable = False`: as in Keras, the layer then runs
    in inference mode whatever `training` says, and neither gamma, beta nor
    the moving statistics change.

    Reference:
        Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
        Training by Reducing Internal Covariate Shift", ICML 2015.
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        synchronized=False,
        frozen_stats=False,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        if not isinstance(axis, int):
            raise TypeError(f"`axis` must be an int (the feature axis); got {axis!r}.")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]; got {momentum}.")
        self.axis = axis
        self.momentum = float(momentum)
        self.synchronized = synchronized
        self.frozen_stats = frozen_stats
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

    def build(self, input_shape):
        ndim = len(input_shape)
        if ndim < 2:
            raise ValueError(f"BatchNorm needs an input of rank >= 2; got shape {input_shape}.")
        (feature_axis,) = normalize_axes(self.axis, ndim)
        channels = input_shape[feature_axis]
        if channels is None:
            raise ValueError(
                f"The feature axis {self.axis} of input shape {input_shape} must be known."
            )
        self._reduction_axes = [a for a in range(ndim) if a != feature_axis]
        self._broadcast_shape = broadcast_shape(input_shape, (feature_axis,))
        # The fused kernel serves 4-D channels-last or channels-first input.
        self._fused_data_format = _fused.DATA_FORMATS.get(feature_axis) if ndim == 4 else None
        dtype = statistics_dtype(self.variable_dtype)
        shape = (channels,)
        self.build_affine(shape, dtype)
        self.moving_mean = self._add_statistic("moving_mean", shape, dtype, self.moving_mean_initializer)
        self.moving_variance = self._add_statistic(
            "moving_variance", shape, dtype, self.moving_variance_initializer
        )
        self.input_spec = keras.InputSpec(ndim=ndim, axes={feature_axis: channels})

    def _add_statistic(self, name, shape, dtype, initializer):
        # Layer.add_weight cannot ask for on-read synchronization. Per-replica
        # copies, each updated locally (no communication in the step), that
        # read as their mean in cross-replica code: checkpoints hold the
        # average over replicas rather than replica 0's copy.
        with keras.name_scope(self.name, caller=self):
            variable = keras.Variable(
                initializer=initializer,
                shape=shape,
                dtype=dtype,
                trainable=False,
                autocast=False,
                aggregation="mean",
                synchronization="on_read",
                name=name,
            )
        return variable

    def _reshape(self, statistic):
        return ops.reshape(statistic, self._broadcast_shape)

    def _train_forward(self, x):
        """Normalizes with the batch's statistics and updates the moving ones."""
        context = _distributed_moments.sync_replica_context() if self.synchronized else None
        ones = ops.ones(self.moving_mean.shape, x.dtype)
        gamma = self.gamma if self.scale else ones
        beta = self.beta if self.center else ops.zeros_like(ones)
        if context is not None:
            outputs, mean, variance = _distributed_moments.batch_norm_training(
                x, gamma, beta, self.epsilon, self._reduction_axes, self._broadcast_shape, context
            )
        elif self._fused_data_format and not _fused.in_xla_context():
            outputs, mean, variance = _fused.batch_norm_training(
                x, gamma, beta, self.epsilon, self._fused_data_format
            )
        else:
            outputs, mean, variance = _fused.batch_norm_training_composed(
                x, gamma, beta, self.epsilon, self._reduction_axes, self._broadcast_shape
            )
        self._update_moving_statistics(mean, variance)
        return outputs

    def _scale_and_offset(self, centered, variance):
        # centered * scale, not x * scale - mean * scale: the latter loses
        # the signal to rounding when |mean| >> std.
        inverse_std = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inverse_std = inverse_std * self._reshape(self.gamma)
        outputs = centered * inverse_std
        if self.center:
            outputs = outputs + self._reshape(self.beta)
        return outputs

    def _update_moving_statistics(self, mean, variance):
        mean = ops.reshape(mean, (-1,))
        variance = ops.reshape(variance, (-1,))
        finite = ops.logical_and(ops.isfinite(mean), ops.isfinite(variance))
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            updated = moving * self.momentum + ops.stop_gradient(batch) * (1.0 - self.momentum)
            moving.assign(ops.where(finite, updated, moving))

    def call(self, inputs, training=None):
        x = ops.cast(inputs, self.moving_mean.dtype)
        if training and self.trainable and not self.frozen_stats:
            outputs = self._train_forward(x)
        else:
            outputs = self._scale_and_offset(
                x - self._reshape(self.moving_mean), self._reshape(self.moving_variance)
            )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {
            "axis": self.axis,
            "momentum": self.momentum,
            "synchronized": self.synchronized,
            "frozen_stats": self.frozen_stats,
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
        }
        return {**super().get_config(), **config}
