"""Residual networks with the normalization as a parameter.

    model = normzoo.models.build("wrn_28_10", norm="skipinit", num_classes=10)
    model = normzoo.models.build("resnet50", layout="slim")

`build`, `names`, `check_name`, `check_arguments`, `arguments`,
`architecture` and `names_with` are the entry points; `blocks` holds the
residual blocks that every family shares. Models are freshly
initialized: `normzoo.build(name, weights=path)` builds one from a
checkpoint.
"""

from normzoo.models import blocks
from normzoo.models.registry import (
    architecture,
    arguments,
    build,
    check_arguments,
    check_name,
    names,
    names_with,
)

__all__ = [
    "architecture",
    "arguments",
    "blocks",
    "build",
    "check_arguments",
    "check_name",
    "names",
    "names_with",
]
