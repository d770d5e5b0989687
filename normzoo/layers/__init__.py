"""Normalization layers: `BatchNorm`, `LayerNorm` and `SkipInit`.

Every layer is registered with Keras under the package name "normzoo", so
models that use them load from `.keras` files without `custom_objects`.
`BatchNormalization` and `LayerNormalization` are `BatchNorm` and
`LayerNorm` under Keras' class names, which Keras' `.weights.h5` files key
layers by: models built with them load weight files saved with
`keras.layers.BatchNormalization` and `keras.layers.LayerNormalization`, and
Keras' layers load theirs.
"""

from normzoo.layers.batch_norm import BatchNorm, BatchNormalization
from normzoo.layers.layer_norm import LayerNorm, LayerNormalization
from normzoo.layers.skip_init import SkipInit

__all__ = ["BatchNorm", "BatchNormalization", "LayerNorm", "LayerNormalization", "SkipInit"]
