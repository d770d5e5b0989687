"""The names of the zoo's layers: the one home of the rules that the model
builders write (`normzoo.models`) and the checkpoint readers parse or
translate into (`normzoo.checkpoints`).

Every layer of a zoo model is named, so two builds of the same model have
the same names; the scheme extends keras.applications' ResNets, so their
weight files restore by name:

- `input`; the stem `conv1_conv`, `conv1_bn` (`STEM`), or a deep stem's
  (ResNet-D's) `conv1_{j}_conv`, `conv1_{j}_bn`, j = 1, 2, 3 (`deep_stem`);
  `post_bn`, the
  final norm of a pre-activation network (`POST`); `avg_pool`; the
  classifier `predictions` (`CLASSIFIER`).
- Stages are `conv2`, `conv3`, ... and their units `block1`, `block2`, ...:
  block `conv{stage}_block{unit}` (`block`). `{block}_{j}_conv` and
  `{block}_{j}_bn` are the j-th convolution of the residual branch
  (j = 1, 2, ...; `branch`) and the norm after it; j = 0 is the shortcut
  (`_0_conv`, `_0_bn`, or the weightless `_0_pool`, `_0_zeropad`).
  `{block}_preact_bn` is a pre-activation block's first norm (`preact`).
- A norm layer ends in `_bn` for BatchNorm and `_ln` for LayerNorm
  (`norm`); the SkipInit scalar of a block is `{block}_skipinit`
  (`skipinit`). So the layer names show the normalization (`norm_of`).
- `{block}_add` adds the skip path (first input) and the residual branch
  (second input) (`add`); a model's residual blocks are found by them.

This module imports nothing of normzoo: the rules are plain strings.
"""

import dataclasses
import re

# The normalizations of the zoo (see `normzoo.models.blocks`).
NORMS = ("batch", "layer", "skipinit", "none")

STEM = "conv1"
# The convolutions of a deep stem.
DEEP_STEM_CONVS = 3
POST = "post"
CLASSIFIER = "predictions"

# The suffix of the layers that show a network's normalization.
_NORM_SUFFIXES = {"batch": "_bn", "layer": "_ln"}
_SKIPINIT_SUFFIX = "_skipinit"
_ADD_SUFFIX = "_add"
_PREACT = "_preact"

_BLOCK = re.compile(r"conv(\d+)_block(\d+)_")


def deep_stem(j):
    """The prefix of the j-th convolution (j = 1 .. `DEEP_STEM_CONVS`) of a
    deep stem, ResNet-D's three 3x3 convolutions in place of the one 7x7
    convolution, and of the norm after it: "conv1_{j}"."""
    return f"{STEM}_{j}"


def block(stage, unit):
    """The name of unit `unit` (1, 2, ...) of stage `stage` (2, 3, ...), the
    prefix of its layers: "conv{stage}_block{unit}"."""
    return f"conv{stage}_block{unit}"


def branch(block_name, j):
    """The prefix of the j-th convolution of a block's residual branch and
    of the norm after it (j = 1, 2, ...; 0 is the shortcut's)."""
    return f"{block_name}_{j}"


def preact(block_name):
    """The prefix of a pre-activation block's first norm and ReLU."""
    return f"{block_name}{_PREACT}"


def conv(prefix):
    """The convolution of `prefix`, e.g. conv("conv1") is "conv1_conv"."""
    return f"{prefix}_conv"


def norm(prefix, kind):
    """The norm layer of `prefix` for normalization `kind` ("batch" or
    "layer", the `NORMS` that have norm layers)."""
    return f"{prefix}{_NORM_SUFFIXES[kind]}"


def skipinit(block_name):
    """The SkipInit scalar that ends the residual branch of `block_name`."""
    return f"{block_name}{_SKIPINIT_SUFFIX}"


def add(block_name):
    """The addition of skip path and residual branch of `block_name`."""
    return f"{block_name}{_ADD_SUFFIX}"


def block_of_add(layer_name):
    """The block whose addition `layer_name` is (see `add`), or None."""
    if layer_name.endswith(_ADD_SUFFIX):
        return layer_name[: -len(_ADD_SUFFIX)]
    return None


def is_norm(layer_name):
    """Whether `layer_name` is a norm layer's (BatchNorm or LayerNorm)."""
    return layer_name.endswith(tuple(_NORM_SUFFIXES.values()))


def norm_of(layer_names):
    """The `NORMS` entry whose layers `layer_names` contain, or None if the
    names show none (not a zoo model)."""
    names = set(layer_names)
    for kind, suffix in (*_NORM_SUFFIXES.items(), ("skipinit", _SKIPINIT_SUFFIX)):
        if any(name.endswith(suffix) for name in names):
            return kind
    if any(_BLOCK.match(name) for name in names):
        return "none"
    return None


def is_preactivation(layer_names):
    """Whether `layer_names` are those of a pre-activation network."""
    return any(f"{_PREACT}_" in name for name in layer_names)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the layer names of a residual network show of its architecture.

    Attributes:
        blocks: The number of blocks of each stage, conv2 first.
        bottleneck: Blocks of three convolutions (1x1, 3x3, 1x1).
        preactivation: Pre-activation blocks (ResNet v2, Wide-ResNets).
        deep_stem: ResNet-D's stem of three 3x3 convolutions.
    """

    blocks: tuple
    bottleneck: bool = False
    preactivation: bool = False
    deep_stem: bool = False

    def __str__(self):
        kinds = [
            kind
            for kind, present in (
                ("bottleneck", self.bottleneck),
                ("pre-activation", self.preactivation),
                ("deep stem", self.deep_stem),
            )
            if present
        ]
        last = 1 + len(self.blocks)
        return ", ".join(
            [f"stages conv2-conv{last} of {', '.join(map(str, self.blocks))} blocks", *kinds]
        )


def architecture_of(layer_names):
    """The `Architecture` that `layer_names` show, or None if they follow no
    zoo scheme (or their stages do not start at conv2)."""
    blocks = {}
    bottleneck = False
    for name in layer_names:
        match = _BLOCK.match(name)
        if match:
            stage, unit = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), unit)
            bottleneck = bottleneck or name == conv(branch(block(stage, unit), 3))
    if not blocks or sorted(blocks) != list(range(2, 2 + len(blocks))):
        return None
    names = set(layer_names)
    return Architecture(
        blocks=tuple(blocks[stage] for stage in sorted(blocks)),
        bottleneck=bottleneck,
        preactivation=is_preactivation(names),
        deep_stem=conv(deep_stem(1)) in names,
    )


def architecture(layer_names):
    """A description of a residual network from its layer names, e.g.
    "stages conv2-conv5 of 3, 4, 6, 3 blocks, bottleneck, pre-activation,
    norm 'batch'", or None if the names follow no zoo scheme."""
    found = architecture_of(layer_names)
    if found is None:
        return None
    return f"{found}, norm {norm_of(layer_names)!r}"
