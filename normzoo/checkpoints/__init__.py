"""Restoring pretrained ResNets with every variable, BatchNorm statistics included.

    report = normzoo.checkpoints.restore(model, "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    model = normzoo.build("resnet50v2", weights="resnet_v2_50.ckpt")  # TF-slim
    model = normzoo.build("resnet50", weights="model.safetensors")  # torchvision/timm
    model.restore_report.preprocess_mode  # "torch": the input preprocessing the weights expect
    model = normzoo.build("resnet20", weights="resnet20_batch_digits")  # shipped with normzoo

A restore is all or nothing: it reads and checks the whole checkpoint
first, and either every variable of the model is restored (moving mean and
variance included) or `RestoreError` says which variables are missing,
unexpected, of another shape or not finite, and nothing is changed.
`strict=False` restores what matches; the `RestoreReport` names the rest.
The formats read are listed in `FORMATS`.

    normzoo.checkpoints.save_weights(model, "model.weights.h5")

writes Keras' `.weights.h5` with a sha256 per tensor, which `restore`
verifies: a damaged tensor is named and nothing is restored. The report
says whether the checkpoint's bytes were verified, and against what
(`normzoo.checkpoints.integrity`), or "not verified".

This prevents a known failure: a pretrained network restored from its
trainable variables only keeps initial BatchNorm statistics, still "loads"
and still trains, and predicts badly.
"""

from normzoo.checkpoints.keras_files import save_weights
from normzoo.checkpoints.report import RestoreError, RestoreReport, ShapeMismatch
from normzoo.checkpoints.restore import read, restore
from normzoo.checkpoints.shipped_files import shipped
from normzoo.checkpoints.source import FORMATS

__all__ = [
    "FORMATS",
    "RestoreError",
    "RestoreReport",
    "ShapeMismatch",
    "read",
    "restore",
    "save_weights",
    "shipped",
]
