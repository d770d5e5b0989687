"""`normzoo.build(name, weights=path)`: a zoo model, in its checkpoint's
architecture and with every variable restored when `weights` is given.

It composes the model registry (`normzoo.models`) and the restore
(`normzoo.checkpoints.restore`), so it lives above both.
"""

import os
import re

from absl import logging

from normzoo import models, naming
from normzoo.checkpoints import integrity, shipped_files
from normzoo.checkpoints.restore import read, restore_source
from normzoo.checkpoints.source import stem_kernel
from normzoo.models import resnet

# The zoo models that keras.applications publishes ImageNet weights for, and
# its constructors.
_KERAS_APPLICATIONS_MODELS = {
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "resnet50v2": "ResNet50V2",
    "resnet101v2": "ResNet101V2",
    "resnet152v2": "ResNet152V2",
}


def build(name, *, weights=None, norm=None, num_classes=None, input_shape=None, **overrides):
    """Builds the zoo model `name`; with `weights`, as the checkpoint requires
    and with every variable restored from it.

    Without `weights` this is `normzoo.models.build(name, ...)`: a freshly
    initialized model. With `weights`, what the checkpoint shows is used
    for every argument not given: the normalization (from its layer names),
    the number of classes (0 for a file without a classifier, e.g.
    keras.applications' `_notop.h5`), the stem width, and the layout of
    ImageNet ResNets. The layout is fixed by TF-slim checkpoints ("slim")
    and torchvision/timm state dicts ("torchvision"), and recorded in
    `.keras` files (their configuration's stem pool and strides); other
    Keras files and normzoo's training checkpoints do not record it, and
    "keras" (keras.applications' layout) is taken when the weights fit it,
    so a keras.applications file builds keras.applications' model. A v1
    ResNet without convolution biases is either "torchvision" or "slim",
    which differ only in strides and epsilon: pass `layout=` then.

    An argument given that contradicts the checkpoint raises ValueError,
    except `num_classes`: a different number of classes builds a new,
    freshly initialized classifier ("predictions", reported as skipped), and
    num_classes=0 leaves the checkpoint's classifier out (reported as
    ignored).

    The input channels are the checkpoint's too (its first convolution's
    kernel): without `input_shape` the family's default height and width
    are taken with them, e.g. (32, 32, 1) for a checkpoint of grey images.

    Args:
        name: One of `normzoo.models.names()`, or any "wrn_<n>_<k>".
        weights: None, or the path of a checkpoint to restore every
            variable from, in any format of `normzoo.checkpoints.restore`.
            normzoo never downloads weights.
        norm: As `normzoo.models.build`; with `weights`, None for the
            checkpoint's.
        num_classes: As `normzoo.models.build`; with `weights`, None for
            the checkpoint's.
        input_shape: As `normzoo.models.build`; with `weights`, its
            channels must be the checkpoint's.
        **overrides: As `normzoo.models.build`; with `weights`, `width` and
            `layout` are the checkpoint's unless given.

    Returns:
        The model. With `weights`, `model.restore_report` is the
        `normzoo.checkpoints.RestoreReport`, whose `preprocess_mode` is the
        input preprocessing the weights expect (e.g. "torch" for
        torchvision and timm, "caffe" for keras.applications' ResNet50):
        feed the model `normzoo.data.load(...,
        preprocess_mode=model.restore_report.preprocess_mode)`.

    Raises:
        ValueError, TypeError: as `normzoo.models.build`, for an invalid
            argument. With `weights`, also ValueError if an argument
            contradicts the checkpoint (`input_shape` with other channels
            included), the layout cannot be told from it, or `weights` is a
            name such as "imagenet" rather than a path (the message says
            where such files come from); TypeError if `weights` is not a
            path.
        normzoo.checkpoints.RestoreError: as `normzoo.checkpoints.restore`
            (strict): `weights` cannot be restored into the model; nothing
            is returned.
    """
    if weights is None:
        return models.build(
            name, norm=norm, num_classes=num_classes, input_shape=input_shape, **overrides
        )
    # Before the checkpoint is read: an invalid argument is named as such,
    # not as a contradiction of the checkpoint.
    input_shape = models.check_arguments(
        name, norm=norm, num_classes=num_classes, input_shape=input_shape
    )
    _check_weights(name, weights)
    source = read(weights)
    defaults = models.arguments(name)
    input_shape = _input_shape(defaults, source, input_shape)
    given = {"norm": norm, "num_classes": num_classes, **overrides}

    arguments = dict(overrides)
    for key, hinted in _hints(name, source, defaults, given).items():
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
        skip=(naming.CLASSIFIER,) if new_head and arguments["num_classes"] else (),
        unused=(naming.CLASSIFIER,) if new_head and not arguments["num_classes"] else (),
    )
    logging.info("normzoo: built %s from %s\n%s", name, weights, report)
    model.restore_report = report
    return model


def _check_weights(name, weights):
    """Raises TypeError unless `weights` is a path, and ValueError, saying
    where such files come from, for a word that names no file and no shipped
    checkpoint (Keras' weights="imagenet")."""
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be the path of a checkpoint (str or os.PathLike) or None; got "
            f"{weights!r} of type {type(weights).__name__}."
        )
    weights = os.fspath(weights)
    if not re.fullmatch(r"\w+", weights) or weights in shipped_files.names():
        return
    if shipped_files.exists(weights):
        return
    if name in _KERAS_APPLICATIONS_MODELS:
        file_name = integrity.keras_applications_file(name)
        _, url = integrity.DISTRIBUTED_FILES[file_name]
        where = (
            f"keras.applications' ImageNet weights for {name} are "
            f"{url} ({integrity.keras_applications_file(name, top=False)} without the "
            f"classifier; keras.applications.{_KERAS_APPLICATIONS_MODELS[name]}(weights='imagenet') "
            f"on a machine with internet access saves it in ~/.keras/models/). Download it, "
            f"then pass its path: normzoo.build({name!r}, weights='/path/to/{file_name}')."
        )
    else:
        where = (
            f"torchvision and timm publish ImageNet weights for their ResNets (timm's on the "
            f"Hugging Face Hub as model.safetensors, e.g. timm/resnet50.a1_in1k); "
            f"keras.applications publishes ImageNet weights for "
            f"{', '.join(_KERAS_APPLICATIONS_MODELS)} only (not {name}); normzoo ships "
            f"{', '.join(shipped_files.names())} (pass the name), and normzoo-train makes more. "
            f"Pass the path of such a file: "
            f"normzoo.build({name!r}, weights='/path/to/model.weights.h5')."
        )
    raise ValueError(
        f"weights={weights!r} names no file: normzoo never downloads weights. `weights` is "
        f"the path of a checkpoint you have, in a format of normzoo.checkpoints.FORMATS "
        f"(Keras .weights.h5, .keras and keras.applications .h5 files, TensorFlow and TF-slim "
        f"checkpoints, torchvision and timm ResNets as .safetensors or .pth files). {where}"
    )


def _input_shape(defaults, source, input_shape):
    """`input_shape`, checked against the checkpoint's input channels, or
    the family's default height and width (in `defaults`, the
    `normzoo.models.arguments`) with those channels."""
    stem_name, stem = stem_kernel(source)
    if stem is None:
        return input_shape
    channels = int(stem.value.shape[-2])
    if input_shape is None:
        default = defaults["input_shape"]
        return None if default[-1] == channels else (*default[:-1], channels)
    if input_shape[-1] != channels:
        raise ValueError(
            f"input_shape={tuple(input_shape)!r} has {input_shape[-1]} channels, but the checkpoint "
            f"{source.path} takes {channels} (its first convolution {stem_name} has a kernel of "
            f"shape {tuple(stem.value.shape)}): pass input_shape="
            f"{(*tuple(input_shape)[:-1], channels)!r}, or omit input_shape to take the "
            f"checkpoint's channels."
        )
    return input_shape


def _source_classes(source):
    head = source.weight(naming.CLASSIFIER, "kernel")
    if head is not None:
        return int(head.value.shape[-1])
    if stem_kernel(source)[1] is not None:
        return 0  # a zoo (or keras.applications) model saved without its top
    return None


def _hints(name, source, defaults, given):
    hints = {}
    layer_names = list(source.layers)
    norm = naming.norm_of(layer_names)
    if norm is not None:
        hints["norm"] = norm
    stem = stem_kernel(source, last=True)[1]
    if "width" in defaults and stem is not None:
        hints["width"] = int(stem.value.shape[-1])
    if "layout" in defaults:
        layout = checkpoint_layout(name, source)
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


def checkpoint_layout(name, source):
    """The layout (see `normzoo.models.resnet`) of the ImageNet ResNet
    `name` that the checkpoint `source` holds: the one it records, else
    "keras" if its weights fit keras.applications' layout; None when it
    does not say (a v1 ResNet without convolution biases, saved without a
    record of its layout: "torchvision" or "slim")."""
    return (
        source.layout
        or source.config_layout
        or _fitting_layout(name, source, naming.norm_of(list(source.layers)))
    )


def _fitting_layout(name, source, norm):
    """Returns "keras" if the weights fit keras.applications' layout, None if
    only another layout fits (a v1 ResNet whose normalized convolutions have
    no bias)."""
    if norm != "batch" or resnet.VARIANTS[name].preactivation:
        return "keras"
    first_conv = naming.conv(naming.branch(naming.block(2, 1), 1))  # conv2_block1_1_conv
    weights = source.layers.get(first_conv, {})
    has_bias = "bias" in weights or len(weights) == 2
    return "keras" if has_bias else None
