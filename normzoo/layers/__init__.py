"""Normalization layers: `BatchNorm`, `LayerNorm` and `SkipInit`.

Every layer is registered with Keras under the package name "normzoo", so
models that use them load from `.keras` files without `custom_objects`.
`BatchNormalization` is `BatchNorm` under Keras' class name, which Keras'
`.weights.h5` files key layers by: models built with it load weight files
saved with `keras.layers.BatchNormalization`.
"""

from normzoo.layers.batch_norm import BatchNorm, BatchNormalization
from normzoo.layers.layer_norm import LayerNorm
from normzoo.layers.skip_init import SkipInit

__all__ = ["BatchNorm", "BatchNormalization", "LayerNorm", "SkipInit"]
