"""Keras' weight files: readers of Keras 3 `.weights.h5` and `.keras` files
and of the Keras 2 HDF5 format of the keras.applications weight files, and
`save_weights`, which writes a Keras 3 `.weights.h5` with a checksum per
tensor (see `normzoo.checkpoints.integrity`).

Keras 2 HDF5 (`save_weights_to_hdf5_group`; the format of the files that
`keras.applications.ResNet50(weights="imagenet")` downloads, e.g.
`resnet50_weights_tf_dim_ordering_tf_kernels.h5`): the root (or its
`model_weights` group, in a whole-model file) has a `layer_names` attribute
listing every layer; each layer is a group of that name whose
`weight_names` attribute lists its weights in order, e.g.
`conv1_bn/gamma:0` (Keras 2) or `conv1_bn/gamma` (Keras 3's legacy writer);
each weight is the dataset at that path inside the layer's group.

Keras 3 `.weights.h5`: `layers/<key>/vars/<i>`, the i-th variable of a
layer in its saved order (own trainable variables, then non-trainable ones),
where `<key>` is derived from the layer's class; the `vars` group's `name`
attribute holds the layer's name. A `.keras` file is a zip holding
`config.json` and such a weights file, `model.weights.h5`. (Keras 2.13-2.15
wrote this format under `_layer_checkpoint_dependencies`; such files are
refused with a message saying how to convert them.)
"""

import io
import json
import os
import re
import zipfile
import zlib

import h5py
import ml_dtypes
import numpy as np

from normzoo import naming
from normzoo._keras_graph import leaf_layers
from normzoo.checkpoints import integrity
from normzoo.checkpoints.report import RestoreError, listing
from normzoo.checkpoints.source import Source, Tensor
from normzoo.models import resnet

# Layer names of the ResNet50 of Keras <= 2.2.4 (converted from Caffe),
# whose weights are not those of keras.applications' ResNet50 today.
_CAFFE_STYLE = re.compile(r"(res|bn)\d[a-z]\d*_branch\d[a-c]?|bn_conv1|fc1000")


_WEIGHTS_SUFFIX = ".weights.h5"


def save_weights(model, path):
    """Writes `model`'s weights to `path` with a sha256 checksum per tensor.

    The file is the one Keras' `model.save_weights(path)` writes (plain
    Keras `model.load_weights(path)` reads it), with HDF5 attributes that
    Keras' reader ignores: every dataset carries the sha256 of its bytes
    and the path of its variable, and the file says that it carries them
    (`normzoo.checkpoints.integrity` describes them).
    `normzoo.checkpoints.restore` recomputes every checksum before it
    assigns anything: a file whose tensor bytes were damaged is refused
    with the damaged variables named, and the report of an intact one says
    "verified". The checksums are computed from the file as written, read
    back. The file appears at `path` only when complete (it is written
    next to it and renamed), so an interrupted save leaves the previous
    file in place.

    Args:
        model: A built Keras model.
        path: The file to write; its name must end in `.weights.h5`, as Keras
            requires.

    Raises:
        ValueError: `path` does not end in `.weights.h5`, or the model is not
            built (Keras' error).
    """
    path = os.fspath(path)
    if not path.endswith(_WEIGHTS_SUFFIX):
        raise ValueError(
            f"save_weights writes Keras weights files, whose names end in "
            f"{_WEIGHTS_SUFFIX} (Keras' load_weights tells formats apart by it); got "
            f"{path!r}.\nFix: pass a path ending in {_WEIGHTS_SUFFIX}, e.g. "
            f"{os.path.splitext(path)[0]}{_WEIGHTS_SUFFIX}."
        )
    directory, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(
        directory, f".{name[: -len(_WEIGHTS_SUFFIX)]}.{os.getpid()}.partial{_WEIGHTS_SUFFIX}"
    )
    try:
        model.save_weights(partial)
        _add_checksums(partial, model)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _add_checksums(path, model):
    variables = {layer.name: saved_order(layer) for layer in leaf_layers(model)}
    with h5py.File(path, "r+") as file:
        datasets = []
        file.visititems(
            lambda _, node: datasets.append(node) if isinstance(node, h5py.Dataset) else None
        )
        for dataset in datasets:
            dataset.attrs[integrity.CHECKSUM_ATTRIBUTE] = integrity.tensor_checksum(dataset[()])
            # Keras names each variable by its position in a `vars` group whose
            # `name` attribute is its layer's name.
            layer = dataset.parent.attrs.get("name")
            owned = variables.get(_text(layer)) if layer is not None else None
            if owned is not None:
                position = int(dataset.name.rsplit("/", 1)[-1])
                dataset.attrs[integrity.VARIABLE_ATTRIBUTE] = owned[position].path
        file.attrs[integrity.FILE_ATTRIBUTE] = integrity.ALGORITHM


def saved_order(layer):
    """The layer's own variables in the order Keras saves them (the
    positions of a Keras 3 weights file)."""
    store = {}
    layer.save_own_variables(store)
    return [store[str(index)] for index in range(len(store))]


def read_h5(path):
    """Reads a Keras 3 `.weights.h5` or a Keras 2 HDF5 weights/model file."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise RestoreError(
            f"{path} starts like an HDF5 file but cannot be read ({error}): it is truncated "
            f"or damaged. Copy or download it again."
        ) from error
    with file:
        try:
            return _read_h5_file(file, path)
        except RestoreError:
            raise
        except _READ_ERRORS as error:
            raise _damaged(path, error) from error


def _read_h5_file(file, path, format_if_keras3="keras_weights_h5"):
    if "layers" in file:
        return _keras3_source(file, path, format_if_keras3)
    if "_layer_checkpoint_dependencies" in file:
        raise RestoreError(
            f"{path} is a weights file of Keras 2.13-2.15, which normzoo does not read. Load "
            f"it into the model it was saved from with that Keras (model.load_weights) and "
            f"save it in the HDF5 format: model.save_weights('weights.h5', save_format='h5')."
        )
    group = file["model_weights"] if "model_weights" in file else file
    if "layer_names" in group.attrs or "layer_names0" in group.attrs:
        layers = _legacy_layers(group, path)
        return Source(
            path,
            "keras_legacy_h5",
            layers,
            verification=(
                "Keras 2 HDF5 files carry no checksums, and only keras.applications' files "
                "under their distributed names (e.g. "
                "resnet50_weights_tf_dim_ordering_tf_kernels.h5) are checked against the "
                "hashes Keras publishes"
            ),
            **_keras_applications_preprocessing(layers),
        )
    raise RestoreError(
        f"{path} is an HDF5 file but not a Keras weights file: it has neither Keras 3's "
        f"'layers' group nor Keras 2's 'layer_names' attribute (top-level keys: "
        f"{', '.join(sorted(file.keys())[:10]) or 'none'}). Pass a file written by "
        f"model.save_weights, model.save or a keras.applications weights file."
    )


def read_keras_file(path):
    """Reads the weights of a Keras 3 `.keras` file, and the layout its
    saved configuration records."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            if "model.weights.h5" not in members:
                raise RestoreError(
                    f"{path} is a zip file but not a .keras model file: it has no "
                    f"model.weights.h5 (members: {', '.join(sorted(members)[:10])}). Sharded "
                    f"or npz-weighted .keras files are not supported: load the model with "
                    f"keras.saving.load_model and save_weights it to a .weights.h5 file."
                )
            config = json.loads(archive.read("config.json")) if "config.json" in members else {}
            weights = io.BytesIO(archive.read("model.weights.h5"))
        _refuse_code(config, path)
        with h5py.File(weights, "r") as file:
            source = _read_h5_file(file, path, format_if_keras3="keras_file")
    except RestoreError:
        raise
    except (zipfile.BadZipFile, zlib.error, json.JSONDecodeError, *_READ_ERRORS) as error:
        raise _damaged(path, error) from error
    source.config_layout = _layout_of_config(config)
    # zipfile checks each member's CRC-32 as it reads it.
    source.passed("the zip CRC-32 of its weights and configuration matches")
    return source


# What h5py and zipfile raise on a damaged file (RestoreError, a ValueError,
# is re-raised before these are caught).
_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, EOFError)


def _damaged(path, error):
    return RestoreError(
        f"{path} cannot be read ({type(error).__name__}: {error}): it is truncated or "
        f"damaged. Copy or download it again; nothing was restored."
    )


def _refuse_code(config, path):
    """Refuses a model configuration holding Python bytecode (a `Lambda`
    layer's lambda function), as Keras' `safe_mode` does. normzoo reads only
    the configuration's JSON and never runs code from it, but such a file
    describes a model whose function the weights alone do not give."""
    found = []

    def visit(node, layer):
        if isinstance(node, dict):
            if node.get("class_name") == "__lambda__":
                found.append(layer)
            config = node.get("config")
            if isinstance(config, dict) and isinstance(config.get("name"), str):
                layer = config["name"]
            for value in node.values():
                visit(value, layer)
        elif isinstance(node, list):
            for value in node:
                visit(value, layer)

    visit(config, None)
    if found:
        raise RestoreError(
            f"{path} holds Python bytecode (the lambda function of layer(s) "
            f"{', '.join(sorted(set(map(str, found))))}), which Keras' safe_mode refuses to "
            f"load and normzoo never runs. If you trust the file, load it with "
            f"keras.saving.load_model(path, safe_mode=False), save its weights with "
            f"model.save_weights('model.weights.h5') and restore that file."
        )


def _keras3_source(file, path, format_):
    checksummed = integrity.FILE_ATTRIBUTE in file.attrs
    layers, damaged = {}, []
    _collect_keras3(file["layers"], path, layers, damaged if checksummed else None)
    if damaged:
        raise RestoreError(
            f"{path} is damaged: the bytes of {len(damaged)} tensor(s) no longer match the "
            f"sha256 saved with them: {listing(damaged)}. Nothing was restored.\n"
            f"Fix: copy or download the file again, or restore an earlier checkpoint."
        )
    source = Source(
        path,
        format_,
        layers,
        _keras3_ignored(file),
        verification=(
            "its weights carry no checksums (Keras' save_weights writes none; "
            "normzoo.checkpoints.save_weights does)"
        ),
    )
    if checksummed:
        count = sum(len(tensors) for tensors in layers.values())
        source.passed(f"the sha256 of each of its {count} tensors matches the one saved with it")
    return source


def _collect_keras3(parent, path, layers, damaged):
    """Reads the tensors of every layer under `parent` into `layers`; when
    `damaged` is a list, checks each tensor's checksum and appends the name
    of each that fails."""
    for key, group in parent.items():
        if "layers" in group:  # a nested model: its layers by their own names
            _collect_keras3(group["layers"], path, layers, damaged)
        if "vars" not in group or not len(group["vars"]):
            continue
        variables = group["vars"]
        name = variables.attrs.get("name")
        if name is None:
            raise RestoreError(
                f"{path} names its layers only by class ({parent.name}/{key}), as Keras "
                f"3 versions before layer names were recorded in weights files did; "
                f"which layer is which cannot be told. Load it into the model it was "
                f"saved from (model.load_weights) and save it again with Keras >= 3.15."
            )
        tensors = {}
        for index in sorted(variables, key=int):
            dataset = variables[index]
            stored = dataset[()]
            if damaged is not None and integrity.tensor_checksum(stored) != _text(
                dataset.attrs.get(integrity.CHECKSUM_ATTRIBUTE, "")
            ):
                variable = dataset.attrs.get(integrity.VARIABLE_ATTRIBUTE)
                damaged.append(f"{_text(variable)} ({dataset.name})" if variable else dataset.name)
            tensors[int(index)] = Tensor(dataset.name, _as_loaded(dataset, stored))
        layers[_text(name)] = tensors


def _keras3_ignored(file):
    # A compiled model's .keras file also holds its optimizer's variables.
    return [(f"/{key}", "optimizer state") for key in file if key == "optimizer"]


def _legacy_layers(group, path):
    layer_names = _string_attribute(group, "layer_names")
    caffe_style = [name for name in layer_names if _CAFFE_STYLE.fullmatch(name)]
    if caffe_style:
        raise RestoreError(
            f"{path} is the ResNet50 file of Keras <= 2.2.4 (layer names converted from "
            f"Caffe: {', '.join(caffe_style[:3])}, ...), whose BatchNorm epsilon (1e-3) and "
            f"layer order differ from keras.applications' ResNet50 today; it is not "
            f"supported. Use today's keras.applications file (the one "
            f"keras.applications.ResNet50(weights='imagenet') downloads, with layer names "
            f"such as conv1_conv and conv2_block1_1_bn)."
        )
    layers = {}
    for name in layer_names:
        layer = group[name]
        weights = {}
        for weight_name in _string_attribute(layer, "weight_names"):
            # "conv1_bn/moving_mean:0" (Keras 2) or "conv1_bn/moving_mean".
            key = weight_name.rsplit("/", 1)[-1].split(":")[0]
            dataset = layer[weight_name]
            weights[key] = Tensor(f"{name}/{weight_name}", _as_loaded(dataset, dataset[()]))
        if weights:
            layers[name] = weights
    return layers


def _keras_applications_preprocessing(layers):
    """The preprocessing of keras.applications' ResNet weights, for a Keras 2
    file whose layers are named as keras.applications' ResNets (the format
    in which keras.applications distributes them): each architecture's
    `keras.applications.resnet*.preprocess_input` mode. Empty for other
    files."""
    if "conv1_conv" not in layers or "conv2_block1_1_conv" not in layers:
        return {}
    if any(name.endswith("_preact_bn") for name in layers):
        return {
            "preprocess_mode": "tf",
            "preprocessing_origin": "keras.applications' ResNetV2 weights expect "
            "keras.applications.resnet_v2.preprocess_input (mode 'tf')",
        }
    return {
        "preprocess_mode": "caffe",
        "preprocessing_origin": "keras.applications' ResNet (v1) weights expect "
        "keras.applications.resnet.preprocess_input (mode 'caffe')",
    }


def _string_attribute(group, name):
    # Keras splits attributes larger than HDF5's header limit into name0, name1, ...
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [_text(value) for value in values]


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _as_loaded(dataset, stored):
    """`stored`, the values of `dataset` as read, as the array Keras loads."""
    if dataset.attrs.get("dtype") == "bfloat16":  # as Keras 3 writes bfloat16 variables
        return np.asarray(stored).view(ml_dtypes.bfloat16)
    return np.asarray(stored)


def _layout_of_config(config):
    """The `normzoo.models.resnet` layout of an ImageNet ResNet's saved
    configuration: the layout whose every observable choice (stem pool,
    where the stride is, convolution biases, epsilon and momentum) the
    configuration shows. None for a configuration without a ResNet stem.
    Layouts that compute the same function (e.g. without normalization)
    resolve to "keras"."""
    layers = {}

    def visit(node):
        if isinstance(node, dict):
            layer_config = node.get("config")
            if isinstance(layer_config, dict) and "name" in layer_config:
                layers[layer_config["name"]] = layer_config
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    if "pool1_pool" not in layers or _first_unit_conv(3, 1) not in layers:
        return None
    observed = {
        "stem_pool_padding": "same" if layers["pool1_pool"]["padding"] == "same" else "zeros"
    }
    norms = [c for name, c in layers.items() if naming.is_norm(name) and "epsilon" in c]
    if norms:
        observed["epsilon"] = norms[0]["epsilon"]
        if "momentum" in norms[0]:
            observed["momentum"] = norms[0]["momentum"]
        # The first unit's first convolution is followed by a norm in v1 and v2.
        observed["biased_normalized_convs"] = layers[_first_unit_conv(2, 1)]["use_bias"]
    first_strides = [
        tuple(layers.get(_first_unit_conv(3, j), {}).get("strides", (1, 1))) for j in (1, 2)
    ]
    downsamples_first = (2, 2) in first_strides
    observed["downsample_unit"] = "first" if downsamples_first else "last"
    if downsamples_first and _first_unit_conv(3, 3) in layers:  # a bottleneck
        observed["stride_in_first_conv"] = first_strides[0] == (2, 2)
    preactivation = naming.is_preactivation(layers)

    candidates = [
        layout
        for layout, by_version in resnet.LAYOUTS.items()
        if preactivation in by_version and _consistent(by_version[preactivation], observed)
    ]
    if "keras" in candidates:
        return "keras"
    return candidates[0] if candidates else None


def _first_unit_conv(stage, j):
    """The j-th convolution of the residual branch of stage `stage`'s first unit."""
    return naming.conv(naming.branch(naming.block(stage, 1), j))


def _consistent(style, observed):
    for key, value in observed.items():
        if key == "biased_normalized_convs":
            actual = style.conv_bias == "always"
        else:
            actual = getattr(style, key)
        if actual != value:
            return False
    return True
