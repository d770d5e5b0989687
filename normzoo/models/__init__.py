"""Residual networks with the normalization as a parameter.

    model = normzoo.models.build("wrn_28_10", norm="skipinit", num_classes=10)
    model = normzoo.models.build("resnet50", layout="slim")

`build`, `names` and `check_name` are the entry points; `blocks` holds the
residual blocks that every family shares, `diagnostics` the
signal-propagation measurements.
"""

from normzoo.models import blocks, diagnostics
from normzoo.models.registry import build, check_name, names

__all__ = ["blocks", "build", "check_name", "diagnostics", "names"]
