"""Layer normalization with separate normalization and parameter axes."""

import keras
from keras import ops

from normzoo.layers._affine import AffineNormalization
from normzoo.layers._statistics import (
    broadcast_shape,
    normalize_axes,
    statistics_dtype,
    moments,
)


@keras.saving.register_keras_serializable(package="normzoo")
class LayerNorm(AffineNormalization):
    """Layer normalization (Ba et al., 2016).

    Normalizes each sample on its own, over the axes `axis`, then applies a
    learned scale and offset that span the axes `param_axis`:

        y = gamma * (x - mean) / sqrt(variance + epsilon) + beta

    where `mean` and the biased `variance` are taken per sample over `axis`.
    No statistic crosses the batch axis, so a sample's output never depends on
    the rest of its batch, in training or inference, and there is nothing to
    keep between steps.

    With image tensors (NHWC), `LayerNorm(axis=(1, 2, 3))` normalizes each
    image over height, width and channels and keeps one gamma/beta per channel
    (the default `param_axis=-1`): GroupNorm with a single group. With
    `axis=-1` and `param_axis=-1` it computes what
    `keras.layers.LayerNormalization()` computes.

    Statistics are computed in float32 under float16/bfloat16 (mixed)
    precision policies, where gamma and beta are float32 variables; the
    output is in the layer's compute dtype.

    Args:
        axis: Integer or tuple of integers, the axes to normalize over. Must
            not include the batch axis 0.
        param_axis: Integer or tuple of integers, the axes gamma and beta
            span; each must have a known size. Every other axis shares them.
        epsilon: Small float added to the variance to avoid dividing by zero.
        center: If True, add the learned offset `beta`.
        scale: If True, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of beta and gamma.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank >= 2. The layer behaves the same in
            training and inference.

    Reference:
        Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
    """

    def __init__(
        self,
        axis=-1,
        param_axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
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
        self.axis = axis if isinstance(axis, int) else tuple(axis)
        self.param_axis = param_axis if isinstance(param_axis, int) else tuple(param_axis)

    def build(self, input_shape):
        ndim = len(input_shape)
        self._axes = normalize_axes(self.axis, ndim)
        param_axes = normalize_axes(self.param_axis, ndim, argument="param_axis")
        if 0 in self._axes or 0 in param_axes:
            raise ValueError(
                "LayerNorm normalizes each sample on its own: `axis` and "
                f"`param_axis` must not include the batch axis 0; got "
                f"axis={self.axis!r}, param_axis={self.param_axis!r}."
            )
        if any(input_shape[a] is None for a in param_axes):
            raise ValueError(
                f"`param_axis`={self.param_axis!r} spans an axis of unknown size "
                f"in input shape {input_shape}."
            )
        self._param_broadcast_shape = broadcast_shape(input_shape, param_axes)
        shape = tuple(input_shape[a] for a in param_axes)
        dtype = statistics_dtype(self.variable_dtype)
        self.build_affine(shape, dtype)
        self.input_spec = keras.InputSpec(
            ndim=ndim, axes={a: input_shape[a] for a in param_axes}
        )
        self._statistics_dtype = dtype

    def call(self, inputs):
        x = ops.cast(inputs, self._statistics_dtype)
        _, variance, centered = moments(x, self._axes)
        outputs = centered * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * ops.reshape(self.gamma, self._param_broadcast_shape)
        if self.center:
            outputs = outputs + ops.reshape(self.beta, self._param_broadcast_shape)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "param_axis": self.param_axis}
