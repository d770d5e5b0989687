"""Normalization layers: `BatchNorm`, `LayerNorm` and `SkipInit`.

Every layer is registered with Keras under the package name "normzoo", so
models that use them load from `.keras` files without `custom_objects`.
"""

from normzoo.layers.batch_norm import BatchNorm
from normzoo.layers.layer_norm import LayerNorm
from normzoo.layers.skip_init import SkipInit

__all__ = ["BatchNorm", "LayerNorm", "SkipInit"]
