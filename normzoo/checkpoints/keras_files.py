"""Readers of Keras' weight files: Keras 3 `.weights.h5` and `.keras`, and the
Keras 2 HDF5 format of the keras.applications weight files.

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
import re
import zipfile
import zlib

import h5py
import ml_dtypes
import numpy as np

from normzoo.checkpoints.report import RestoreError
from normzoo.checkpoints.source import Source, Tensor
from normzoo.models import resnet

# Layer names of the ResNet50 of Keras <= 2.2.4 (converted from Caffe),
# whose weights are not those of keras.applications' ResNet50 today.
_CAFFE_STYLE = re.compile(r"(res|bn)\d[a-z]\d*_branch\d[a-c]?|bn_conv1|fc1000")


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
        return Source(path, format_if_keras3, _keras3_layers(file, path), _keras3_ignored(file))
    if "_layer_checkpoint_dependencies" in file:
        raise RestoreError(
            f"{path} is a weights file of Keras 2.13-2.15, which normzoo does not read. Load "
            f"it into the model it was saved from with that Keras (model.load_weights) and "
            f"save it in the HDF5 format: model.save_weights('weights.h5', save_format='h5')."
        )
    group = file["model_weights"] if "model_weights" in file else file
    if "layer_names" in group.attrs or "layer_names0" in group.attrs:
        return Source(path, "keras_legacy_h5", _legacy_layers(group, path))
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


def _keras3_layers(file, path):
    layers = {}
    _collect_keras3(file["layers"], path, layers)
    return layers


def _collect_keras3(parent, path, layers):
    for key, group in parent.items():
        if "layers" in group:  # a nested model: its layers by their own names
            _collect_keras3(group["layers"], path, layers)
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
        name = _text(name)
        layers[name] = {
            int(index): Tensor(f"{variables.name}/{index}", _array(variables[index]))
            for index in sorted(variables, key=int)
        }


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
            weights[key] = Tensor(f"{name}/{weight_name}", _array(layer[weight_name]))
        if weights:
            layers[name] = weights
    return layers


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


def _array(dataset):
    if dataset.attrs.get("dtype") == "bfloat16":  # as Keras 3 writes bfloat16 variables
        return np.array(dataset, dtype=ml_dtypes.bfloat16)
    return np.asarray(dataset[()])


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
    if "pool1_pool" not in layers or "conv3_block1_1_conv" not in layers:
        return None
    observed = {
        "stem_pool_padding": "same" if layers["pool1_pool"]["padding"] == "same" else "zeros"
    }
    norms = [c for name, c in layers.items() if name.endswith(("_bn", "_ln")) and "epsilon" in c]
    if norms:
        observed["epsilon"] = norms[0]["epsilon"]
        if "momentum" in norms[0]:
            observed["momentum"] = norms[0]["momentum"]
        # The first unit's first convolution is followed by a norm in v1 and v2.
        observed["biased_normalized_convs"] = layers["conv2_block1_1_conv"]["use_bias"]
    first_strides = [
        tuple(layers.get(f"conv3_block1_{j}_conv", {}).get("strides", (1, 1))) for j in (1, 2)
    ]
    downsamples_first = (2, 2) in first_strides
    observed["downsample_unit"] = "first" if downsamples_first else "last"
    if downsamples_first and "conv3_block1_3_conv" in layers:  # a bottleneck
        observed["stride_in_first_conv"] = first_strides[0] == (2, 2)
    preactivation = any(name.endswith("_preact_relu") for name in layers)

    candidates = [
        layout
        for layout, by_version in resnet.LAYOUTS.items()
        if preactivation in by_version and _consistent(by_version[preactivation], observed)
    ]
    if "keras" in candidates:
        return "keras"
    return candidates[0] if candidates else None


def _consistent(style, observed):
    for key, value in observed.items():
        if key == "biased_normalized_convs":
            actual = style.conv_bias == "always"
        else:
            actual = getattr(style, key)
        if actual != value:
            return False
    return True
