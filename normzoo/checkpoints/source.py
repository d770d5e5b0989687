"""A checkpoint read into memory, in normzoo's names, whatever its format.

Every reader turns its format into a `Source`: tensors grouped by the
normzoo (= keras.applications) layer they belong to (`normzoo.naming`), converted to Keras
shapes, each remembering its name in the file for messages. Matching a
`Source` against a model (`normzoo.checkpoints.restore`) is then one piece
of code for every format.
"""

import dataclasses

import numpy as np

from normzoo import naming

FORMATS = {
    "normzoo_checkpoint": "TF2 checkpoint of normzoo's training loop "
    "(tf.train.Checkpoint(model=..., optimizer=...), e.g. model_dir/checkpoints)",
    "tf_object_checkpoint": "TF2 object-based checkpoint of a Keras model "
    "(tf.train.Checkpoint or Keras 2 save_weights in the TF format)",
    "keras_weights_h5": "Keras 3 weights file (.weights.h5)",
    "keras_file": "Keras 3 model file (.keras)",
    "keras_legacy_h5": "Keras 2 HDF5 weights (the keras.applications files as distributed, "
    "e.g. resnet50_weights_tf_dim_ordering_tf_kernels.h5)",
    "tf_slim": "TF1 name-based checkpoint of a TF-slim resnet_v1/resnet_v2",
    "torch_safetensors": "safetensors file of a torchvision or timm ResNet's state dict "
    "(read with the safetensors package, no torch needed)",
    "torch_state_dict": "PyTorch state dict of a torchvision or timm ResNet (.pth/.bin, read "
    "with torch.load(weights_only=True), only when torch is installed)",
}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A checkpoint tensor, already in the shape of the Keras variable it maps to."""

    source_name: str
    value: np.ndarray


@dataclasses.dataclass
class Source:
    """A checkpoint's tensors, in memory, keyed by normzoo layer and weight.

    Attributes:
        path: The file (or checkpoint prefix) read.
        format: A key of `FORMATS`.
        layers: {layer name: {key: Tensor}}. A key is the weight's name
            ("kernel", "moving_mean") when the format records names, or its
            position in the layer's saved variables (an int) when it records
            only the order (Keras 3 weights files).
        ignored: (tensor name, reason) pairs for tensors that are not model
            weights: optimizer state, step counters.
        layout: The `normzoo.models.resnet` layout of the architecture the
            checkpoint comes from, when the format fixes it ("slim" for
            TF-slim), else None.
        config_layout: The layout read from a saved model configuration
            (.keras files), else None.
        verified: True if the checkpoint's bytes were checked against
            checksums or hashes, and matched (see `verification`).
        verification: What the bytes were checked against, if `verified`;
            else why they could not be.
        preprocess_mode: The input preprocessing the weights expect (a
            `normzoo.data.preprocessing.PREPROCESS_MODES` entry), when the
            format or the files next to it say, else None.
        preprocessing_origin: Why `preprocess_mode` is what it is: the
            source's convention or the file that records it.
    """

    path: str
    format: str
    layers: dict
    ignored: list = dataclasses.field(default_factory=list)
    layout: str | None = None
    config_layout: str | None = None
    verified: bool = False
    verification: str = "nothing was checked"
    preprocess_mode: str | None = None
    preprocessing_origin: str = "neither the checkpoint nor the files next to it record it"

    def passed(self, check):
        """Records that the bytes passed `check` (a sentence saying what they
        matched)."""
        self.verification = f"{self.verification}; {check}" if self.verified else check
        self.verified = True

    def weight(self, layer, key):
        """The Tensor of `layer`'s weight `key` (a name, or a position for
        positional formats), or None."""
        weights = self.layers.get(layer, {})
        if key in weights:
            return weights[key]
        if isinstance(key, str) and weights and all(isinstance(k, int) for k in weights):
            return weights.get(_POSITIONS.get(key))
        return None


# Positions of weights in Keras' saved order (own trainable variables, then
# non-trainable ones), to read a positional file's kernels (shapes of the
# stem and the classifier) before a model exists.
_POSITIONS = {"kernel": 0}


# The stem's (first, last) convolution: the one 7x7 convolution, or
# ResNet-D's deep stem.
_STEMS = (
    (naming.conv(naming.STEM),) * 2,
    (naming.conv(naming.deep_stem(1)), naming.conv(naming.deep_stem(naming.DEEP_STEM_CONVS))),
)


def stem_kernel(source, *, last=False):
    """(layer name, kernel `Tensor`) of the first convolution of the
    checkpoint's network (whose kernel's input channels are the image's
    channels), or with `last=True` of the stem's last one (whose output
    channels are the stem's width); (None, None) if it has no ResNet stem."""
    for names in _STEMS:
        name = names[1] if last else names[0]
        kernel = source.weight(name, "kernel")
        if kernel is not None:
            return name, kernel
    return None, None
