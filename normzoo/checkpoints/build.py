"""`normzoo.models.build(name, weights=path)`: a zoo model in its checkpoint's
architecture, with every variable restored."""

import inspect

from absl import logging

from normzoo import models
from normzoo.checkpoints.restore import read, restore_source
from normzoo.checkpoints.source import norm_of
from normzoo.models import registry, resnet

_HEAD = "predictions"


def build_with_weights(
    name, weights, *, norm=None, num_classes=None, input_shape=None, **overrides
):
    """Builds model `name` as the checkpoint `weights` requires and restores it.

    What the checkpoint shows is used for every argument not given: the
    normalization (from its layer names), the number of classes (0 for a
    file without a classifier, e.g. keras.applications' `_notop.h5`), the
    stem width, and the layout of ImageNet ResNets. The layout is fixed by
    TF-slim checkpoints ("slim") and recorded in `.keras` files (their
    configuration's stem pool and strides); other Keras files and normzoo's training
    checkpoints do not record it, and "keras" (keras.applications' layout) is
    taken when the weights fit it, so a keras.applications file builds
    keras.applications' model. A v1 ResNet without convolution biases is
    either "torchvision" or "slim", which differ only in strides and epsilon:
    pass `layout=` then.

    An argument given that contradicts the checkpoint raises ValueError,
    except `num_classes`: a different number of classes builds a new,
    freshly initialized classifier ("predictions", reported as skipped), and
    num_classes=0 leaves the checkpoint's classifier out (reported as
    ignored).

    Returns:
        The model; `model.restore_report` is the `RestoreReport`.

    Raises:
        RestoreError: as `normzoo.checkpoints.restore` (strict).
        ValueError: an argument contradicts the checkpoint, or the layout
            cannot be told from it.
    """
    source = read(weights)
    builder = registry._builder(name)
    accepted = set(inspect.signature(builder.func).parameters)
    given = {"norm": norm, "num_classes": num_classes, **overrides}

    arguments = dict(overrides)
    for key, hinted in _hints(name, source, accepted, given).items():
        if given.get(key) is None:
            arguments[key] = hinted
        elif given[key] != hinted:
            raise ValueError(
                f"{key}={given[key]!r} contradicts the checkpoint {source.path}, which "
                f"holds a model with {key}={hinted!r}; omit {key} to take the checkpoint's."
            )
    arguments.setdefault("norm", norm)
    source_classes = _source_classes(source)
    arguments["num_classes"] = source_classes if num_classes is None else num_classes

    model = models.build(name, input_shape=input_shape, **arguments)
    new_head = arguments["num_classes"] not in (None, source_classes)
    report = restore_source(
        model,
        source,
        skip=(_HEAD,) if new_head and arguments["num_classes"] else (),
        unused=(_HEAD,) if new_head and not arguments["num_classes"] else (),
    )
    logging.info("normzoo: built %s from %s\n%s", name, weights, report)
    model.restore_report = report
    return model


def _source_classes(source):
    head = source.weight(_HEAD, "kernel")
    if head is not None:
        return int(head.value.shape[-1])
    if source.weight("conv1_conv", "kernel") is not None:
        return 0  # a zoo (or keras.applications) model saved without its top
    return None


def _hints(name, source, accepted, given):
    hints = {}
    layer_names = list(source.layers)
    norm = norm_of(layer_names)
    if norm is not None:
        hints["norm"] = norm
    stem = source.weight("conv1_conv", "kernel")
    if "width" in accepted and stem is not None:
        hints["width"] = int(stem.value.shape[-1])
    if "layout" in accepted:
        layout = source.layout or source.config_layout or _fitting_layout(name, source, norm)
        if layout is not None:
            hints["layout"] = layout
        elif given.get("layout") is None:
            raise ValueError(
                f"{source.path} does not record its layout, and its weights fit both "
                f"'torchvision' and 'slim' (v1 without convolution biases; they differ in "
                f"stride positions and epsilon only): pass layout='torchvision' or "
                f"layout='slim', whichever model it was saved from."
            )
    return hints


def _fitting_layout(name, source, norm):
    """Returns "keras" if the weights fit keras.applications' layout, None if
    only another layout fits (a v1 ResNet whose normalized convolutions have
    no bias)."""
    if norm != "batch" or resnet.VARIANTS[name].preactivation:
        return "keras"
    weights = source.layers.get("conv2_block1_1_conv", {})
    has_bias = "bias" in weights or len(weights) == 2
    return "keras" if has_bias else None
