"""TF1 name-based checkpoints of TF-slim's `resnet_v1_{50,101,152}` and
`resnet_v2_{50,101,152}` (tf_slim.nets / tensorflow/models research/slim),
in normzoo's names. Models built with layout="slim" compute what these
networks compute.

TF-slim variable (under the network's scope, e.g. `resnet_v2_50/`) ->
normzoo variable (`normzoo.naming`):

| TF-slim | normzoo |
|---|---|
| `conv1/weights`, `conv1/biases` (v2) | `conv1_conv/kernel`, `/bias` |
| `conv1/BatchNorm/{gamma,beta,moving_mean,moving_variance}` (v1) | `conv1_bn/...` |
| `block{b}/unit_{u}/bottleneck_v{1,2}/conv{j}/weights` (`/biases`: v2 conv3) | `conv{b+1}_block{u}_{j}_conv/kernel` (`/bias`) |
| `.../conv{j}/BatchNorm/...` | `conv{b+1}_block{u}_{j}_bn/...` |
| `.../shortcut/weights` (`/biases`: v2), `.../shortcut/BatchNorm/...` (v1) | `conv{b+1}_block{u}_0_conv/...`, `_0_bn/...` |
| `.../bottleneck_v2/preact/...` | `conv{b+1}_block{u}_preact_bn/...` |
| `postnorm/...` (v2) | `post_bn/...` |
| `logits/weights` (1x1 conv, shape (1, 1, C, N)), `logits/biases` | `predictions/kernel` (shape (C, N)), `/bias` |

Kernels are HWIO in both, so only the logits' kernel changes shape.
Variables outside the network's scope (`global_step`, ...) and the copies
an optimizer or a moving average keeps of a variable
(`<variable>/Momentum`, `<variable>/ExponentialMovingAverage`) are reported
as ignored. TF-slim's v2 ImageNet checkpoints have 1001 classes (class 0 is
"background"). Their weights expect TF-slim's preprocessing: v1 its
vgg_preprocessing (preprocess_mode "vgg"), v2 its inception_preprocessing
("tf").
"""

import re

import numpy as np

from normzoo import naming
from normzoo.checkpoints.report import RestoreError
from normzoo.checkpoints.source import Source, Tensor

_WEIGHTS = {"weights": "kernel", "biases": "bias"}
_NORM_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_UNIT = re.compile(r"block(\d+)/unit_(\d+)/bottleneck_v([12])/(.+)")
_STEM_KERNEL = re.compile(r"(.*/)?conv1/weights")
# What TF-slim's ImageNet checkpoints were trained on (tensorflow/models
# research/slim: preprocessing/preprocessing_factory.py maps resnet_v1_* to
# vgg_preprocessing, and its README says "ResNet V2 models use Inception
# pre-processing", which scales to [-1, 1]), by bottleneck version.
_PREPROCESSING = {
    "1": ("vgg", "TF-slim's resnet_v1 checkpoints were trained with its vgg_preprocessing"),
    "2": ("tf", "TF-slim's resnet_v2 checkpoints were trained with its inception_preprocessing"),
}


def read(reader, prefix):
    """Reads a TF1 checkpoint (a `tf.train.CheckpointReader`) as a TF-slim
    ResNet."""
    shapes = reader.get_variable_to_shape_map()
    scope = _scope(shapes, prefix)
    versions = {match[3] for match in map(_UNIT.match, _under(shapes, scope)) if match}
    if len(versions) != 1:
        raise RestoreError(
            f"{prefix}: the TF-slim scope {scope!r} has "
            f"{'no bottleneck units' if not versions else 'both v1 and v2 units'}; "
            f"expected the variables of one resnet_v1_* or resnet_v2_* network."
        )

    layers, ignored, unmapped = {}, [], []
    for name in sorted(shapes):
        if not name.startswith(scope):
            ignored.append((name, f"outside the network's scope {scope!r}"))
            continue
        target = _normzoo_name(name[len(scope) :])
        if target is None:
            unmapped.append(name)
            continue
        layer, weight = target
        value = reader.get_tensor(name)
        if (layer, weight) == (naming.CLASSIFIER, "kernel") and value.ndim == 4:
            value = value.reshape(value.shape[-2:])  # 1x1 conv -> Dense
        layers.setdefault(layer, {})[weight] = Tensor(name, np.asarray(value))

    mapped = {tensor.source_name for weights in layers.values() for tensor in weights.values()}
    unexpected = {}
    for name in unmapped:
        parent = name.rsplit("/", 1)[0]
        if parent in mapped:
            ignored.append((name, f"a copy of {parent} kept by an optimizer or a moving average"))
        else:
            unexpected[name] = Tensor(name, np.asarray(reader.get_tensor(name)))
    if unexpected:
        # Kept under their own names: they match no model layer, so restore
        # reports each one as unexpected.
        layers.update({name: {name: tensor} for name, tensor in unexpected.items()})
    (version,) = versions
    return Source(
        prefix,
        "tf_slim",
        layers,
        ignored,
        layout="slim",
        preprocess_mode=_PREPROCESSING[version][0],
        preprocessing_origin=_PREPROCESSING[version][1],
    )


def _scope(shapes, prefix):
    scopes = sorted(
        {
            match[1] or ""
            for match in map(_STEM_KERNEL.fullmatch, shapes)
            if match and "/block" not in (match[1] or "")
        },
        key=len,
    )
    if not scopes:
        examples = ", ".join(sorted(shapes)[:5]) or "no variables"
        raise RestoreError(
            f"{prefix} is a TF1 name-based checkpoint but not of a TF-slim ResNet: no "
            f"'<scope>/conv1/weights' variable (it has {examples}, ...). Supported: "
            f"tf_slim's resnet_v1_50/101/152 and resnet_v2_50/101/152."
        )
    return scopes[0]


def _under(names, scope):
    return [name[len(scope) :] for name in names if name.startswith(scope)]


def _normzoo_name(name):
    """(layer, weight) in normzoo's names for a TF-slim name relative to the
    network's scope, or None."""
    parts = name.split("/")
    if parts[0] == "conv1":
        return _conv_or_norm(naming.STEM, parts[1:])
    if parts[0] == "postnorm" and len(parts) == 2 and parts[1] in _NORM_WEIGHTS:
        return naming.norm(naming.POST, "batch"), parts[1]
    if parts[0] == "logits" and len(parts) == 2 and parts[1] in _WEIGHTS:
        return naming.CLASSIFIER, _WEIGHTS[parts[1]]
    match = _UNIT.fullmatch(name)
    if not match:
        return None
    block, unit, _, rest = match.groups()
    block_name = naming.block(int(block) + 1, int(unit))
    layer, *weight = rest.split("/")
    if layer == "preact" and len(weight) == 1 and weight[0] in _NORM_WEIGHTS:
        return naming.norm(naming.preact(block_name), "batch"), weight[0]
    if layer == "shortcut":
        return _conv_or_norm(naming.branch(block_name, 0), weight)
    conv = re.fullmatch(r"conv(\d+)", layer)
    if conv:
        return _conv_or_norm(naming.branch(block_name, conv[1]), weight)
    return None


def _conv_or_norm(prefix, weight):
    if len(weight) == 1 and weight[0] in _WEIGHTS:
        return naming.conv(prefix), _WEIGHTS[weight[0]]
    if len(weight) == 2 and weight[0] == "BatchNorm" and weight[1] in _NORM_WEIGHTS:
        return naming.norm(prefix, "batch"), weight[1]
    return None
