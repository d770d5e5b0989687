"""normzoo: normalization in residual networks, for Keras 3 on TensorFlow."""

__version__ = "0.1.0"

from normzoo import data, layers  # noqa: E402,F401
from normzoo import models  # noqa: E402,F401
from normzoo import bn, checkpoints  # noqa: E402,F401
