"""normzoo: normalization in residual networks, for Keras 3 on TensorFlow."""

__version__ = "0.1.0"

from normzoo import layers  # noqa: E402,F401
