"""The learned scale (gamma) and offset (beta) shared by BatchNorm and LayerNorm."""

import keras
from keras import constraints, initializers, regularizers

_PARAMETERS = ("gamma", "beta")
_SETTINGS = ("initializer", "regularizer", "constraint")
_MODULES = {"initializer": initializers, "regularizer": regularizers, "constraint": constraints}


class AffineNormalization(keras.layers.Layer):
    """Base of the normalization layers: `epsilon`, and the optional `gamma`
    (with `scale=True`) and `beta` (with `center=True`) with their
    initializers, regularizers and constraints, created by `build_affine`
    and listed in `get_config`."""

    def __init__(
        self,
        *,
        epsilon,
        center,
        scale,
        beta_initializer,
        gamma_initializer,
        beta_regularizer,
        gamma_regularizer,
        beta_constraint,
        gamma_constraint,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if epsilon <= 0:
            raise ValueError(f"`epsilon` must be positive; got {epsilon}.")
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        arguments = locals()
        for parameter in _PARAMETERS:
            for setting in _SETTINGS:
                name = f"{parameter}_{setting}"
                setattr(self, name, _MODULES[setting].get(arguments[name]))
        self.gamma = None
        self.beta = None

    def build_affine(self, shape, dtype, with_gamma=None, with_beta=None):
        """Creates gamma (by default if `scale`) and beta (by default if
        `center`) with the given shape and dtype."""
        with_gamma = self.scale if with_gamma is None else with_gamma
        with_beta = self.center if with_beta is None else with_beta
        for parameter, wanted in (("gamma", with_gamma), ("beta", with_beta)):
            if wanted:
                weight = self.add_weight(
                    shape=shape,
                    name=parameter,
                    dtype=dtype,
                    initializer=getattr(self, f"{parameter}_initializer"),
                    regularizer=getattr(self, f"{parameter}_regularizer"),
                    constraint=getattr(self, f"{parameter}_constraint"),
                    trainable=True,
                    autocast=False,
                )
                setattr(self, parameter, weight)

    def get_config(self):
        config = {"epsilon": self.epsilon, "center": self.center, "scale": self.scale}
        for parameter in _PARAMETERS:
            for setting in _SETTINGS:
                name = f"{parameter}_{setting}"
                config[name] = _MODULES[setting].serialize(getattr(self, name))
        return {**super().get_config(), **config}
