"""SkipInit: one learnable scalar at the end of a residual branch."""

import keras
from keras import ops

from normzoo.layers._statistics import statistics_dtype


@keras.saving.register_keras_serializable(package="normzoo")
class SkipInit(keras.layers.Layer):
    """Multiplies its input by one learnable scalar, `alpha`.

    Placed at the end of every residual branch, before the addition to the
    skip path, it replaces normalization in a residual network (De & Smith,
    2020): with `alpha = 0` every residual block starts as the identity, so a
    network of any depth starts as a shallow one and its signal does not
    explode; the scalars then grow as the branches become useful.

        y = alpha * x

    `alpha` is a float32 variable of shape `()` under any float16/bfloat16
    (mixed) precision policy; the product is taken in the compute dtype.

    Args:
        initial_alpha: Initial value of `alpha`. The paper uses 0, or at most
            1/sqrt(d) for a network of d residual blocks; 1.0 is its failing
            control (the branches then add up as in an unnormalized ResNet).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of any shape. The layer behaves the same in
            training and inference.

    Reference:
        De & Smith, "Batch Normalization Biases Residual Blocks Towards the
        Identity Function in Deep Networks", NeurIPS 2020, arXiv:2002.10444.
    """

    def __init__(self, initial_alpha=0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_alpha = float(initial_alpha)

    def build(self, input_shape):
        self.alpha = self.add_weight(
            shape=(),
            name="alpha",
            dtype=statistics_dtype(self.variable_dtype),
            initializer=keras.initializers.Constant(self.initial_alpha),
            trainable=True,
            autocast=False,
        )

    def call(self, inputs):
        return inputs * ops.cast(self.alpha, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "initial_alpha": self.initial_alpha}
