"""PyTorch state dicts of torchvision and timm ResNets, in normzoo's names.

Two files hold such a state dict (a flat {name: tensor} mapping, what
`model.state_dict()` returns):

- `.safetensors` (the format the Hugging Face Hub serves timm's and
  torchvision's weights in, e.g. timm's `resnet50.a1_in1k/model.safetensors`):
  read with the `safetensors` package and NumPy, without torch. The format
  holds tensors only and runs no code.
- `.pth` / `.bin` (`torch.save(model.state_dict(), path)`, e.g.
  torchvision's `resnet50-11ad3fa6.pth`): a pickle, which normzoo opens only
  with `torch.load(path, weights_only=True)` (torch's unpickler that
  accepts tensors and plain containers and refuses every other object),
  and only when torch is installed. Nothing is ever unpickled otherwise.

Both come from the same architectures (layout "torchvision" of
`normzoo.models.resnet`: v1.5, no convolution biases, epsilon 1e-5):
torchvision's resnet18 ... resnet152 and wide_resnet50_2 / 101_2, and timm's
ResNets of those names and of ResNet-D (`resnet50d`, ...). Names map as

| torchvision / timm | normzoo |
|---|---|
| `conv1.weight` (O, I, kh, kw) | `conv1_conv/kernel` (kh, kw, I, O) |
| `bn1.{weight,bias,running_mean,running_var}` | `conv1_bn/{gamma,beta,moving_mean,moving_variance}` |
| timm's deep stem `conv1.{0,3,6}.weight`, `conv1.{1,4}.*`, `bn1.*` | `conv1_{1,2,3}_conv/kernel`, `conv1_{1,2}_bn/*`, `conv1_3_bn/*` |
| `layer{s}.{u}.conv{j}.weight`, `.bn{j}.*` | `conv{s+1}_block{u+1}_{j}_conv/kernel`, `_{j}_bn/*` |
| `layer{s}.{u}.downsample.0.weight`, `.downsample.1.*` | `conv{s+1}_block{u+1}_0_conv/kernel`, `_0_bn/*` |
| timm's avg-down `layer{s}.{u}.downsample.1.weight`, `.downsample.2.*` | the same (`downsample.0` is the pool) |
| `fc.weight` (N, C), `fc.bias` | `predictions/kernel` (C, N), `predictions/bias` |

BatchNorm's `num_batches_tracked` (a count torch keeps for
`momentum=None` only; Keras' BatchNorm has none) is reported as ignored.
A state dict saved from `torch.nn.DataParallel` (names prefixed
`module.`) reads as the plain one. A tensor of another name is kept under
its own name, so that restore reports it as unexpected.

Checksums: safetensors files carry none (the package checks that the
header's offsets and sizes fit the file, so a cut file is refused, but a
changed byte inside a tensor is not noticed); `torch.save` writes a zip
whose members (each tensor's storage) carry a CRC-32, which is checked
here (torch's own loader does not check it).
"""

import importlib.util
import re
import zipfile

import ml_dtypes
import numpy as np
import safetensors

from normzoo import naming
from normzoo.checkpoints.report import RestoreError, listing
from normzoo.checkpoints.source import Source, Tensor

LAYOUT = "torchvision"
# torchvision's and timm's ImageNet ResNets take [0, 1] pixels standardized
# with ImageNet's per-channel mean and standard deviation (torchvision's
# weights' `transforms()`, timm's `pretrained_cfg` mean/std).
PREPROCESS_MODE = "torch"
_PREPROCESSING_ORIGIN = (
    "torchvision's and timm's ImageNet ResNets take [0, 1] pixels standardized with "
    "ImageNet's per-channel mean and standard deviation"
)

_NORM_WEIGHTS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
_LINEAR_WEIGHTS = {"weight": "kernel", "bias": "bias"}
_BATCH_COUNTER = "num_batches_tracked"
_UNIT = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
# torch.nn.DataParallel / DistributedDataParallel save their module's names under this prefix.
_WRAPPER_PREFIX = "module."

# safetensors dtype names -> NumPy dtypes (BF16 through ml_dtypes, as Keras stores it).
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

# The first 2 bytes of a pickle of protocol 2 or newer (PROTO opcode + protocol):
# what torch.save wrote before its zip format (PyTorch < 1.6, or
# `_use_new_zipfile_serialization=False`).
_PICKLE_PROTO = 0x80


def is_safetensors(path):
    """True if the file at `path` starts as a safetensors file does: an
    8-byte little-endian header size that fits the file, then a JSON object."""
    with open(path, "rb") as file:
        start = file.read(9)
        file.seek(0, 2)
        size = file.tell()
    if len(start) < 9:
        return False
    header = int.from_bytes(start[:8], "little")
    return 2 <= header <= size - 8 and start[8:9] == b"{"


def is_torch_file(path):
    """True if the file at `path` is what `torch.save` writes: a zip with a
    `data.pkl` member, or a pickle (torch's format before its zip)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False  # a damaged zip: the .keras reader says so
    with open(path, "rb") as file:
        start = file.read(2)
    return len(start) == 2 and start[0] == _PICKLE_PROTO and 2 <= start[1] <= 5


def read_safetensors(path):
    """Reads a `.safetensors` state dict of a torchvision or timm ResNet."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        entries = safetensors.deserialize(data)
    except safetensors.SafetensorError as error:
        raise RestoreError(
            f"{path} cannot be read as a safetensors file ({type(error).__name__}: {error}): "
            f"it is truncated or damaged. Copy or download it again; nothing was restored."
        ) from error
    tensors = {}
    for name, entry in entries:
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise RestoreError(
                f"{path}: tensor {name!r} has dtype {entry['dtype']}, which no ResNet weight "
                f"has; supported: {', '.join(_DTYPES)}. Save the state dict in float32."
            )
        tensors[name] = np.frombuffer(entry["data"], dtype=dtype).reshape(entry["shape"])
    source = state_dict_source(path, "torch_safetensors", tensors)
    source.verification = (
        "safetensors files carry no checksums (the header's offsets and sizes were checked, "
        "so a cut file would have been refused, but a changed byte inside a tensor goes "
        "unnoticed); compare the file's sha256 with the one its publisher lists"
    )
    return source


def read_torch_file(path):
    """Reads a `.pth`/`.bin` state dict with `torch.load(weights_only=True)`.

    Raises:
        RestoreError: torch is not installed (the message names safetensors
            as the way without torch); the file holds objects other than
            tensors and plain containers (torch refuses to unpickle them);
            a zip member fails its CRC-32; or it is not a state dict.
    """
    if importlib.util.find_spec("torch") is None:
        raise RestoreError(
            f"{path} is a PyTorch file (torch.save's pickle format, .pth/.bin), which normzoo "
            f"reads only through torch.load(weights_only=True), and torch is not installed. "
            f"Fix: use the weights as a .safetensors file, which normzoo reads without torch "
            f"(timm's and torchvision's weights on the Hugging Face Hub come as "
            f"model.safetensors; or convert on a machine with torch: "
            f"safetensors.torch.save_file(torch.load(path, weights_only=True), "
            f"'model.safetensors')), or install torch (pip install torch)."
        )
    crc_checked = _check_zip_crc(path)
    # Imported only here: torch is optional, and importing it takes seconds.
    import torch  # noqa: PLC0415

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, ...)
        raise RestoreError(
            f"{path} cannot be loaded with torch.load(weights_only=True) "
            f"({type(error).__name__}: {str(error).splitlines()[0]}). normzoo never unpickles "
            f"anything but tensors and plain containers: a file holding a whole pickled "
            f"model or training state is refused, and so is a damaged one.\n"
            f"Fix: where the model is defined, save its state dict "
            f"(torch.save(model.state_dict(), 'model.pth'), or safetensors.torch.save_file), "
            f"and pass that file."
        ) from error
    state_dict, ignored = _state_dict_of(loaded, path)
    tensors = {
        name: value.detach().to(torch.float32).numpy()
        if value.dtype == torch.bfloat16
        else value.detach().numpy()
        for name, value in state_dict.items()
    }
    source = state_dict_source(path, "torch_state_dict", tensors)
    source.ignored[:0] = ignored
    if crc_checked:
        source.passed(crc_checked)
    else:
        source.verification = (
            "the file carries no checksums (torch.save's format before its zip, or a zip "
            "written with torch.serialization.set_crc32_options(False))"
        )
    return source


def _check_zip_crc(path):
    """Checks the CRC-32 of every member of torch.save's zip; returns what
    matched, or None when there is nothing to check."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if all(member.CRC == 0 for member in members if member.file_size):
                return None
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise RestoreError(
            f"{path} cannot be read ({type(error).__name__}: {error}): it is truncated or "
            f"damaged. Copy or download it again; nothing was restored."
        ) from error
    if damaged is not None:
        raise RestoreError(
            f"{path} is damaged: its member {damaged} (a tensor's storage or the pickle "
            f"naming them) no longer matches its CRC-32. Nothing was restored.\n"
            f"Fix: copy or download the file again."
        )
    return f"the zip CRC-32 of each of its {len(members)} members (every tensor's storage) matches"


def _state_dict_of(loaded, path):
    """The {name: tensor} mapping in what torch.load returned, and the
    entries around it reported as ignored: a state dict itself, or a
    training checkpoint's "state_dict" / "model" entry."""
    import torch  # noqa: PLC0415  (see read_torch_file)

    def is_state_dict(value):
        return (
            isinstance(value, dict)
            and bool(value)
            and all(isinstance(tensor, torch.Tensor) for tensor in value.values())
        )

    if is_state_dict(loaded):
        return loaded, []
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if is_state_dict(loaded.get(key)):
                ignored = [
                    (str(other), "not the model's state dict (training state)")
                    for other in loaded
                    if other != key
                ]
                return loaded[key], ignored
    found = (
        f"a dict with keys {', '.join(map(str, list(loaded)[:8]))}"
        if isinstance(loaded, dict)
        else f"a {type(loaded).__name__}"
    )
    raise RestoreError(
        f"{path} holds {found}, not a state dict ({{name: tensor}}, what "
        f"model.state_dict() returns, or a checkpoint with one under 'state_dict' or "
        f"'model').\nFix: save model.state_dict() and pass that file."
    )


def state_dict_source(path, format_, tensors):
    """The `Source` of a torchvision/timm ResNet's state dict `tensors`
    ({name: NumPy array}, shapes as in torch), in normzoo's names and Keras
    shapes.

    Raises:
        RestoreError: no tensor has a torchvision/timm ResNet name.
    """
    if tensors and all(name.startswith(_WRAPPER_PREFIX) for name in tensors):
        tensors = {name[len(_WRAPPER_PREFIX) :]: value for name, value in tensors.items()}
    avg_down = {
        match[1] + "." + match[2]
        for match in map(_UNIT.fullmatch, tensors)
        if match and match[3].startswith("downsample.2.")
    }
    deep_stem = "conv1.0.weight" in tensors
    layers, ignored, unexpected = {}, [], {}
    for name, value in tensors.items():
        if name.endswith(f".{_BATCH_COUNTER}"):
            ignored.append(
                (name, "BatchNorm's count of training batches, which Keras' BatchNorm does not keep")
            )
            continue
        target = _normzoo_name(name, avg_down, deep_stem)
        if target is None:
            unexpected[name] = Tensor(name, np.asarray(value))
            continue
        layer, weight = target
        layers.setdefault(layer, {})[weight] = Tensor(name, _to_keras(np.asarray(value), weight))
    if not layers:
        raise RestoreError(
            f"{path} holds no tensor of a torchvision or timm ResNet (names such as "
            f"conv1.weight, bn1.running_mean, layer1.0.conv1.weight, fc.weight); it has "
            f"{listing(sorted(tensors)) or 'no tensors'}. Supported: torchvision's "
            f"resnet18-152 and wide_resnet50_2/101_2, timm's ResNets of those names and "
            f"resnet18d-152d."
        )
    # Kept under their own names: they match no model layer, so restore
    # reports each one as unexpected.
    layers.update({name: {name: tensor} for name, tensor in unexpected.items()})
    return Source(
        path,
        format_,
        layers,
        ignored,
        layout=LAYOUT,
        preprocess_mode=PREPROCESS_MODE,
        preprocessing_origin=_PREPROCESSING_ORIGIN,
    )


def _to_keras(value, weight):
    """A torch tensor's values in the shape of the Keras variable: a
    convolution's (O, I, kh, kw) kernel as (kh, kw, I, O), a Linear's (N, C)
    weight as the Dense kernel (C, N)."""
    if weight == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if weight == "kernel" and value.ndim == 2:
        return value.T
    return value


def _normzoo_name(name, avg_down, deep_stem):
    """(layer, weight) in normzoo's names for a torchvision/timm name, or
    None; `avg_down` holds the "stage.unit" of timm's avg-down shortcuts,
    `deep_stem` says whether the stem is timm's deep one."""
    module, _, weight = name.rpartition(".")
    if module == "fc":
        return (naming.CLASSIFIER, _LINEAR_WEIGHTS[weight]) if weight in _LINEAR_WEIGHTS else None
    if module == "conv1":
        return _conv(naming.STEM, weight)
    if module == "bn1":
        # The stem's last norm: of its one convolution, or of a deep stem's last.
        return _norm(naming.deep_stem(naming.DEEP_STEM_CONVS) if deep_stem else naming.STEM, weight)
    stem = re.fullmatch(r"conv1\.(\d)", module)
    if stem:
        # timm's deep stem: Sequential(conv, bn, act, conv, bn, act, conv); bn1 ends it.
        position = int(stem[1])
        prefix = naming.deep_stem(position // 3 + 1)
        if position in (0, 3, 6):
            return _conv(prefix, weight)
        if position in (1, 4):
            return _norm(prefix, weight)
        return None
    match = _UNIT.fullmatch(name)
    if not match:
        return None
    stage, unit, rest = int(match[1]), int(match[2]), match[3]
    block = naming.block(stage + 1, unit + 1)
    module = rest.rpartition(".")[0]
    convolution = re.fullmatch(r"conv(\d)", module)
    if convolution:
        return _conv(naming.branch(block, int(convolution[1])), weight)
    norm = re.fullmatch(r"bn(\d)", module)
    if norm:
        return _norm(naming.branch(block, int(norm[1])), weight)
    downsample = re.fullmatch(r"downsample\.(\d)", module)
    if downsample:
        # Sequential(conv, bn), or timm's avg-down Sequential(pool, conv, bn).
        conv_index = 1 if f"{stage}.{unit}" in avg_down else 0
        index = int(downsample[1])
        if index == conv_index:
            return _conv(naming.branch(block, 0), weight)
        if index == conv_index + 1:
            return _norm(naming.branch(block, 0), weight)
    return None


def _conv(prefix, weight):
    return (naming.conv(prefix), "kernel") if weight == "weight" else None


def _norm(prefix, weight):
    if weight not in _NORM_WEIGHTS:
        return None
    return naming.norm(prefix, "batch"), _NORM_WEIGHTS[weight]
