"""`restore(model, path)`: every variable, all or nothing."""

import dataclasses
import os
import re
import zipfile

import h5py
import numpy as np

from normzoo import backends, naming
from normzoo._keras_graph import leaf_layers
from normzoo.checkpoints import integrity, keras_files, provenance, shipped_files, torch_files
from normzoo.checkpoints.report import RestoreError, RestoreReport, ShapeMismatch
from normzoo.checkpoints.source import FORMATS

if backends.TENSORFLOW:
    import tensorflow as tf

    from normzoo.checkpoints import tf_checkpoints

# The kernel of a network's first convolution, whose input channels are the
# image's: the stem's, or the first of a deep stem's.
_FIRST_KERNELS = tuple(
    f"{naming.conv(stem)}/kernel" for stem in (naming.STEM, naming.deep_stem(1))
)
_TF_DATA_FILE = re.compile(r"\.data-\d+-of-\d+$")
# The first bytes of a zip archive (a .keras file), which keeps its directory at the end.
_ZIP_SIGNATURE = b"PK\x03\x04"


def restore(model, path, *, strict=True, skip=()):
    """Restores every variable of `model` from the checkpoint at `path`.

    Reads and checks the whole checkpoint before assigning anything: with
    `strict=True` either every variable of the model (BatchNorm moving
    statistics included) is restored, or `RestoreError` is raised and every
    variable keeps its value, bit for bit.

    Variables are matched by layer name and weight name (or the weight's
    position in its layer, for Keras 3 weights files, which record only the
    order); the names are those of `normzoo.models.blocks`, which are
    keras.applications' names and map one to one onto TF-slim's (see
    `normzoo.checkpoints.slim`). The formats are `normzoo.checkpoints.FORMATS`:

    - normzoo's training checkpoints: a `model_dir/checkpoints` directory
      (its latest checkpoint) or a checkpoint prefix (`.../ckpt-1200`); the
      model's variables are restored, the optimizer's ignored;
    - Keras 3 `.weights.h5` and `.keras` files (normzoo's `model.weights.h5`,
      or saved from keras.applications models);
    - Keras 2 HDF5 weight files, as keras.applications distributes them
      (`resnet50_weights_tf_dim_ordering_tf_kernels.h5`, `_notop.h5`,
      101/152 and V2);
    - TF1 checkpoints of TF-slim `resnet_v1_*` / `resnet_v2_*`;
    - state dicts of torchvision's and timm's ResNets, as `.safetensors`
      files (no torch needed) or `.pth`/`.bin` files (read with
      `torch.load(weights_only=True)` when torch is installed; see
      `normzoo.checkpoints.torch_files`).

    `path` may also be the name of a checkpoint shipped with normzoo
    (`normzoo.checkpoints.shipped()`, e.g. "resnet20_batch_digits").

    Damaged files are refused, whatever `strict` says, before anything is
    assigned: the bytes are checked against every checksum or hash there is
    for them (`normzoo.checkpoints.integrity`): the sha256 of each tensor
    of a `.weights.h5` written by `normzoo.checkpoints.save_weights` (the
    damaged variables are named), the CRC32C of each tensor of a TensorFlow
    checkpoint, the CRC-32s of a `.keras` file, the md5 Keras publishes for
    a keras.applications file under its distributed name, the CRC-32 of
    each member of a `torch.save` zip, and the sha256 a
    `manifest.json` next to the file records (normzoo's `checkpoints/`). A
    truncated or structurally damaged HDF5 file cannot be opened. HDF5
    files without checksums (a `.weights.h5` from Keras' own
    `save_weights`, a renamed keras.applications file) restore, but a
    flipped bit inside a tensor goes unnoticed unless it makes a value NaN
    or Inf: the report then says "not verified" (`RestoreReport.verified`);
    so does that of a `.safetensors` file, a format without checksums.

    The report also says which input preprocessing the weights expect
    (`RestoreReport.preprocess_mode`, a mode of `normzoo.data.load`):
    "caffe" for keras.applications' ResNet files, "tf" for their ResNetV2
    and TF-slim's resnet_v2, "vgg" for TF-slim's resnet_v1, "torch" for
    torchvision and timm, and for normzoo's own checkpoints what the
    training run fed (its `flags.json`, or the entry of a published
    checkpoint in `manifest.json`); None when nothing says.

    A checkpoint fits a model only if it was saved from the same
    architecture; `normzoo.build(name, weights=path)` builds the model
    in the checkpoint's layout and size.

    Args:
        model: A built Keras model, e.g. from `normzoo.models.build`.
        path: A checkpoint file, prefix or directory (see above).
        strict: If True, raise `RestoreError` unless every model variable not
            named in `skip` is restored and every checkpoint tensor of the
            model is used. If False, restore every variable that has a
            finite tensor of the right shape and report the rest.
        skip: Layer names or variable paths (e.g. "predictions" for a new
            classifier, or "conv1_bn/moving_mean") to leave as they are; they
            are reported as skipped, and their checkpoint tensors as ignored.

    Returns:
        A `RestoreReport` naming every model variable and checkpoint tensor.

    Raises:
        RestoreError: The checkpoint is missing, truncated, damaged (its
            bytes fail a checksum or published hash) or of an unknown
            format (the message says which formats are known); a
            `.keras` file holds Python bytecode (a `Lambda` layer's lambda,
            which Keras' safe_mode refuses; it is never run); or, with
            `strict=True`, variables are missing, unexpected, of another
            shape, or hold NaN/Inf (each one is named). The model is
            unchanged.
        ValueError: `skip` names something the model does not have.
    """
    return restore_source(model, read(path), strict=strict, skip=skip)


def read(path):
    """Reads the checkpoint at `path` into a `normzoo.checkpoints.source.Source`,
    checking its bytes against every checksum or hash there is for them (see
    `restore`); raises `RestoreError` as `restore` does for a file it cannot
    read or that fails a check."""
    path = shipped_files.resolve(os.fspath(path))
    prefix = _tf_prefix(path)
    if os.path.isdir(path) or prefix is not None:
        backends.require_tensorflow(f"Reading the TensorFlow checkpoint at {path}")
    if os.path.isdir(path):
        return _with_recorded_preprocessing(tf_checkpoints.read(_latest_checkpoint(path)))
    if prefix is not None:
        return _with_recorded_preprocessing(tf_checkpoints.read(prefix))
    if not os.path.exists(path):
        raise RestoreError(
            f"No checkpoint at {path}: no such file, directory or TensorFlow checkpoint "
            f"prefix ({path}.index does not exist either). Check the path, or name a "
            f"checkpoint shipped with normzoo: {', '.join(shipped_files.names())}."
        )
    if h5py.is_hdf5(path):
        reader = keras_files.read_h5
    elif torch_files.is_safetensors(path):
        reader = torch_files.read_safetensors
    elif torch_files.is_torch_file(path):
        reader = torch_files.read_torch_file
    elif zipfile.is_zipfile(path):
        reader = keras_files.read_keras_file
    else:
        with open(path, "rb") as file:
            signature = file.read(4)
        if signature == _ZIP_SIGNATURE:
            raise RestoreError(
                f"{path} starts like a zip (.keras) file but has no zip directory at its end: "
                f"it is truncated or damaged. Copy or download it again."
            )
        known = "\n".join(f"  - {description}" for description in FORMATS.values())
        raise RestoreError(f"{path} is in none of the checkpoint formats normzoo reads:\n{known}")
    source = reader(path)
    # After reading: a damaged tensor is named, a known foreign file (e.g.
    # Keras 2.2.4's ResNet50 under today's name) is explained, before the
    # whole file's hash is compared.
    matched = integrity.check_file(path)
    if matched:
        source.passed(matched)
    return _with_recorded_preprocessing(source)


def _with_recorded_preprocessing(source):
    """`source`, with the preprocessing its training run recorded when its
    format does not fix one (normzoo's own checkpoints)."""
    if source.preprocess_mode is None:
        recorded = provenance.recorded_preprocessing(source.path)
        if recorded is not None:
            source.preprocess_mode, source.preprocessing_origin = recorded
    return source


def _tf_prefix(path):
    if os.path.exists(f"{path}.index"):
        return path
    if path.endswith(".index") and os.path.exists(path):
        return path[: -len(".index")]
    if _TF_DATA_FILE.search(path) and os.path.exists(path):
        return _TF_DATA_FILE.sub("", path)
    return None


def _latest_checkpoint(directory):
    latest = tf.train.latest_checkpoint(directory)
    if latest:
        return latest
    hints = []
    if os.path.isdir(os.path.join(directory, "checkpoints")):
        hints.append(f"its checkpoints/ subdirectory ({os.path.join(directory, 'checkpoints')})")
    if os.path.exists(os.path.join(directory, "model.weights.h5")):
        hints.append(os.path.join(directory, "model.weights.h5"))
    if os.path.exists(os.path.join(directory, "saved_model.pb")):
        raise RestoreError(
            f"{directory} is a SavedModel, which holds a graph rather than named "
            f"weights; it is not supported. Pass a checkpoint or weights file."
        )
    hint = f" Pass {' or '.join(hints)}." if hints else ""
    raise RestoreError(
        f"{directory} is a directory without TensorFlow checkpoints (no 'checkpoint' "
        f"index file).{hint}"
    )


def restore_source(model, source, *, strict=True, skip=(), unused=()):
    """`restore` from a checkpoint already read (see `read`); the tensors of
    the checkpoint's layers named in `unused` are reported as ignored rather
    than unexpected (a classifier left out on purpose)."""
    plan, report = _match(model, source, _skip_set(model, skip), set(unused))
    if strict and not report.complete:
        report = dataclasses.replace(report, applied=False)
        raise RestoreError(_failure_message(model, source, report), report)
    _assign(plan)
    return report


def _skip_set(model, skip):
    if isinstance(skip, str):
        skip = (skip,)
    paths = {variable.path for variable in model.weights}
    layer_names = {layer.name for layer in leaf_layers(model)}
    unknown = [name for name in skip if name not in paths and name not in layer_names]
    if unknown:
        raise ValueError(
            f"skip names {', '.join(map(repr, unknown))}, which model {model.name!r} does "
            f"not have; give layer names (e.g. 'predictions') or variable paths (e.g. "
            f"'conv1_bn/moving_mean')."
        )
    return set(skip)


def _match(model, source, skip, unused):
    plan, restored, missing, skipped, mismatched, non_finite = [], [], [], [], [], []
    used = set()
    ignored = list(source.ignored)
    owned = set()
    for layer in leaf_layers(model):
        variables = keras_files.saved_order(layer)
        weights = source.layers.get(layer.name, {})
        positional = bool(weights) and all(isinstance(key, int) for key in weights)
        for position, variable in enumerate(variables):
            owned.add(id(variable))
            key = position if positional else variable.name
            tensor = weights.get(key)
            if tensor is not None:
                used.add((layer.name, key))
            if layer.name in skip or variable.path in skip:
                skipped.append(variable.path)
                if tensor is not None:
                    ignored.append((tensor.source_name, f"{variable.path} is skipped"))
            elif tensor is None:
                missing.append(variable.path)
            elif tuple(tensor.value.shape) != tuple(variable.shape):
                mismatched.append(
                    ShapeMismatch(
                        variable.path,
                        tuple(variable.shape),
                        tensor.source_name,
                        tuple(tensor.value.shape),
                    )
                )
            elif not _finite(tensor.value):
                non_finite.append((variable.path, tensor.source_name))
            else:
                plan.append((variable, tensor.value))
                restored.append(variable.path)
    # Variables no layer owns (none in normzoo's models) are accounted for too.
    missing.extend(v.path for v in model.weights if id(v) not in owned and v.path not in skip)
    unexpected = []
    for layer_name, weights in source.layers.items():
        for key, tensor in weights.items():
            if (layer_name, key) in used:
                continue
            if layer_name in unused:
                ignored.append((tensor.source_name, f"the model has no layer {layer_name!r}"))
            else:
                unexpected.append(tensor.source_name)
    report = RestoreReport(
        source=source.path,
        format=source.format,
        restored=tuple(restored),
        missing=tuple(missing),
        skipped=tuple(skipped),
        shape_mismatched=tuple(mismatched),
        non_finite=tuple(non_finite),
        unexpected=tuple(unexpected),
        ignored=tuple(ignored),
        verified=source.verified,
        verification=source.verification,
        preprocess_mode=source.preprocess_mode,
        preprocessing_origin=source.preprocessing_origin,
    )
    return plan, report


def _finite(value):
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating) and value.dtype.kind != "V":
        return True
    return bool(np.isfinite(value.astype(np.float32)).all())


def _assign(plan):
    # Values are already validated, so an assignment can only fail for
    # reasons outside the checkpoint (e.g. out of memory): then the
    # variables assigned so far get their old values back.
    previous = [variable.numpy() for variable, _ in plan]
    done = 0
    try:
        for variable, value in plan:
            variable.assign(np.asarray(value, dtype=variable.dtype))
            done += 1
    except BaseException:
        for (variable, _), old in zip(plan[:done], previous):
            variable.assign(old)
        raise


def _failure_message(model, source, report):
    lines = [
        f"Cannot restore {source.path} ({FORMATS[source.format]}) into model "
        f"{model.name!r}; nothing was changed."
    ]
    lines.extend(f"  {problem}" for problem in report.problems())
    model_names = [layer.name for layer in leaf_layers(model) if layer.weights]
    source_architecture = naming.architecture(list(source.layers))
    model_architecture = naming.architecture(model_names)
    if source_architecture and model_architecture and source_architecture != model_architecture:
        lines.append(
            f"  The checkpoint holds another architecture: {source_architecture}; the "
            f"model has {model_architecture}."
        )
    lines.append("Fix: " + _fix(source, report))
    return "\n".join(lines)


def _fix(source, report):
    if report.non_finite and not (report.missing or report.unexpected or report.shape_mismatched):
        return (
            "the checkpoint holds NaN/Inf values (a diverged run or a damaged file); "
            "restore an earlier checkpoint."
        )
    channels = _input_channels_mismatch(report)
    if channels is not None:
        model_channels, source_channels = channels
        return (
            f"the checkpoint's first convolution takes {source_channels} input channel(s), the "
            f"model's {model_channels}: build the model with input_shape=(height, width, "
            f"{source_channels}) (normzoo.build(name, weights=path) does when "
            f"input_shape is not given)."
        )
    differing = [*report.missing, *(mismatch.variable for mismatch in report.shape_mismatched)]
    head = naming.CLASSIFIER
    source_head = {tensor.source_name for tensor in source.layers.get(head, {}).values()}
    if (
        all(name.startswith(f"{head}/") for name in differing)
        and set(report.unexpected) <= source_head
    ):
        return (
            f"only the classifier differs: pass skip=['{head}'] to keep the model's own "
            f"classifier (a new head for fine-tuning), or build the model with the "
            f"checkpoint's number of classes (num_classes=0 for a file without a top)."
        )
    return (
        "build the model the checkpoint was saved from, under the same model name: "
        "normzoo.build(name, weights=path) takes the checkpoint's layout, "
        "normalization, number of classes, width and input channels, but not its depth. "
        "To restore only what matches, pass strict=False "
        "(the report names what was not restored); to leave layers out on purpose, "
        "name them in skip=."
    )


def _input_channels_mismatch(report):
    """(model channels, checkpoint channels) if the one difference is the
    input channels of the stem's kernel (k, k, in, out), else None."""
    if report.missing or report.unexpected or len(report.shape_mismatched) != 1:
        return None
    (mismatch,) = report.shape_mismatched
    model_shape, source_shape = tuple(mismatch.model_shape), tuple(mismatch.source_shape)
    if (
        mismatch.variable not in _FIRST_KERNELS
        or len(model_shape) != 4
        or len(source_shape) != 4
        or model_shape[:2] + model_shape[3:] != source_shape[:2] + source_shape[3:]
    ):
        return None
    return model_shape[2], source_shape[2]
