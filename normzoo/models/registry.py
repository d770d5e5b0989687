"""`build(name, ...)`, `names()`, `check_name(name)`, `check_arguments(name,
...)`, `arguments(name)`, `architecture(name)` and `names_with(architecture)`:
the zoo by name.

A model built from a checkpoint is `normzoo.build(name, weights=path)`
(`normzoo.checkpoints.build`), which builds on these.
"""

import functools
import inspect
import re

from normzoo import naming
from normzoo.models import blocks, cifar_resnet, resnet, wide_resnet

_BUILDERS = {
    **{variant: functools.partial(resnet.resnet, variant) for variant in resnet.VARIANTS},
    **{
        f"resnet{depth}": functools.partial(cifar_resnet.cifar_resnet, depth)
        for depth in cifar_resnet.DEPTHS
    },
}

_WIDE_RESNET = re.compile(r"wrn_(\d+)_(\d+)")
# Listed by names(); build() accepts any valid wrn_<n>_<k>.
_LISTED_WIDE_RESNETS = ("wrn_16_4", "wrn_16_8", "wrn_28_10", "wrn_40_4")

# Arguments of every builder that build() takes itself, rather than as overrides.
_BUILD_ARGUMENTS = ("norm", "num_classes", "input_shape")


def names():
    """The model names `build` accepts, sorted.

    Wide-ResNets are listed by a few of the paper's configurations; `build`
    accepts any "wrn_<n>_<k>" with n = 6N + 4 (N >= 1) and k >= 1.
    """
    return sorted([*_BUILDERS, *_LISTED_WIDE_RESNETS])


def _builder(name):
    if not isinstance(name, str):
        raise TypeError(
            f"The model name must be a string; got {name!r} of type {type(name).__name__}. "
            f"Pass one of normzoo.models.names() or 'wrn_<n>_<k>', e.g. build('resnet20')."
        )
    if name in _BUILDERS:
        return _BUILDERS[name]
    match = _WIDE_RESNET.fullmatch(name)
    if match:
        depth, widen_factor = int(match[1]), int(match[2])
        wide_resnet.check_depth_and_width(depth, widen_factor)
        return functools.partial(wide_resnet.wide_resnet, depth, widen_factor)
    raise ValueError(
        f"Unknown model {name!r}. Valid names: {', '.join(sorted(_BUILDERS))}, and "
        "wrn_<n>_<k> for any Wide-ResNet (n = 6N + 4, e.g. wrn_16_4, wrn_28_10)."
    )


def check_name(name):
    """Raises ValueError (TypeError for a non-string), naming the valid
    names, unless `build` accepts `name`.

    Builds nothing: for validating a configuration before the (possibly slow)
    build.
    """
    _builder(name)


def check_arguments(name, *, norm=None, num_classes=None, input_shape=None, layout=None):
    """Raises as `build` does for an invalid `name`, `norm`, `num_classes`,
    `input_shape` or `layout` (None: not given), building nothing; returns
    `input_shape` as a tuple (or None).

    `normzoo.build` calls it before it reads a checkpoint, so that an
    invalid argument is named as such, not as a contradiction of the
    checkpoint.
    """
    _builder(name)
    if norm is not None:
        blocks.check_choice("norm", norm, naming.NORMS)
    if num_classes is not None:
        blocks.check_classifier(num_classes, None)
    if input_shape is not None:
        input_shape = blocks.check_input_shape(input_shape)
    if layout is not None:
        if name not in resnet.VARIANTS:
            raise ValueError(
                f"{name!r} takes no layout: layouts ({', '.join(resnet.LAYOUTS)}) are those "
                f"of the ImageNet ResNets ({', '.join(resnet.VARIANTS)}). Leave layout unset."
            )
        resnet.check_layout(name, layout)
    return input_shape


def architecture(name):
    """The `normzoo.naming.Architecture` of the model `name` (what its layer
    names show: blocks per stage, bottleneck, pre-activation, deep stem),
    from the families' tables, building nothing. Raises as `check_name`."""
    _builder(name)
    if name in resnet.VARIANTS:
        spec = resnet.VARIANTS[name]
        return naming.Architecture(
            blocks=spec.depths,
            bottleneck=spec.bottleneck,
            preactivation=spec.preactivation,
            deep_stem=spec.resnet_d,
        )
    match = _WIDE_RESNET.fullmatch(name)
    if match:
        units = (int(match[1]) - 4) // 6
        return naming.Architecture(blocks=(units,) * 3, preactivation=True)
    units = (int(name.removeprefix("resnet")) - 2) // 6
    return naming.Architecture(blocks=(units,) * 3)


def names_with(found, *, stem_channels=None, stage_channels=None):
    """The model names whose architecture is `found` (a
    `normzoo.naming.Architecture`, e.g. of a checkpoint's layer names).

    `stem_channels` (the stem's last convolution's output channels) and
    `stage_channels` (those of the first convolution of the first block)
    tell Wide-ResNets apart: WRN-n-k's first stage has 16k channels, and
    wide_resnet50_2's bottlenecks twice as many as resnet50's. Unknown
    (None), a Wide-ResNet's k is named "<k>" and both ResNet-50s match.
    """
    ratio = stage_channels / stem_channels if stem_channels and stage_channels else None
    matches = [
        variant
        for variant, spec in resnet.VARIANTS.items()
        if architecture(variant) == found and ratio in (None, spec.bottleneck_width)
    ]
    units = found.blocks[0]
    if len(found.blocks) == 3 and found.blocks == (units,) * 3 and not (found.bottleneck or found.deep_stem):
        if not found.preactivation and 6 * units + 2 in cifar_resnet.DEPTHS:
            matches.append(f"resnet{6 * units + 2}")
        if found.preactivation:
            widen = stage_channels // 16 if stage_channels and stage_channels % 16 == 0 else "<k>"
            matches.append(f"wrn_{6 * units + 4}_{widen}")
    return matches


def arguments(name):
    """The keyword arguments that `build(name, ...)` takes, each with the
    family's default: `norm`, `num_classes` and `input_shape` (e.g.
    (224, 224, 3) for an ImageNet ResNet), then the family's overrides
    (e.g. `layout`, `width`). Raises as `check_name` does.
    """
    parameters = inspect.signature(_builder(name).func).parameters
    # The builders' own `name` (the Keras model's) is out of reach: `name`
    # is build's model name.
    return {
        key: parameter.default
        for key, parameter in parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY and key != "name"
    }


def build(name, *, norm=None, num_classes=None, input_shape=None, **overrides):
    """Builds a residual network of the zoo, with the normalization `norm`.

    Args:
        name: One of `names()`, or any "wrn_<n>_<k>".
        norm: "batch", "layer", "skipinit" or "none" (see
            `normzoo.models.blocks`); None for "batch".
        num_classes: Size of the classifier; None for the family's default
            (1000 for ImageNet ResNets, 10 for CIFAR ResNets and
            Wide-ResNets); 0 for no classifier (the pooled features).
        input_shape: Channels-last input shape; None for the family's
            default ((224, 224, 3) for ImageNet ResNets, (32, 32, 3)
            otherwise).
        **overrides: Keyword arguments of the family's builder:
            `resnet.resnet` (layout, width, ...), `cifar_resnet.cifar_resnet`
            (width, ...) or `wide_resnet.wide_resnet` (dropout_rate, ...); all
            take skipinit_alpha, synchronized_bn and classifier_activation.

    Returns:
        An uncompiled `keras.Model` mapping images to logits (or features),
        freshly initialized, whose layers are named as `normzoo.naming`
        describes. `normzoo.build(name, weights=path)` builds one from a
        checkpoint instead.

    Raises:
        ValueError, TypeError: an unknown model name, norm, layout or
            override, or an argument of the wrong type or out of range; the
            message names the argument, the value and what is valid.
            `weights` is a TypeError naming `normzoo.build`.
    """
    if "weights" in overrides:
        raise TypeError(
            f"normzoo.models.build builds a freshly initialized model and takes no weights. "
            f"To build {name!r} from a checkpoint, call normzoo.build({name!r}, weights=...), "
            f"which takes every other argument of normzoo.models.build too."
        )
    input_shape = check_arguments(
        name, norm=norm, num_classes=num_classes, input_shape=input_shape
    )
    valid = [key for key in arguments(name) if key not in _BUILD_ARGUMENTS]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown argument(s) {', '.join(unknown)} for {name!r}; "
            f"valid overrides: {', '.join(valid)}."
        )
    given = {"norm": "batch" if norm is None else norm, **overrides}
    if num_classes is not None:
        given["num_classes"] = num_classes
    if input_shape is not None:
        given["input_shape"] = input_shape
    return _builder(name)(**given)
