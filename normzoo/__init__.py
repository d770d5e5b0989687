"""normzoo: normalization in residual networks, for Keras 3 on TensorFlow.

    model = normzoo.models.build("wrn_28_10", norm="skipinit", num_classes=10)
    model = normzoo.build("resnet50", weights="resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    normzoo.bn.freeze(model)

`normzoo.build` is `normzoo.models.build` plus `weights=`: a model in a
checkpoint's architecture, with every variable restored from it.
"""

__version__ = "0.1.0"

from normzoo import data, layers  # noqa: E402,F401
from normzoo import models  # noqa: E402,F401
from normzoo import bn, checkpoints  # noqa: E402,F401
from normzoo.checkpoints.build import build  # noqa: E402,F401
