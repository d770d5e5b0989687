"""Starting a run from a pretrained checkpoint.

`normzoo.training.train` calls `read_init_checkpoint` (before anything is
built, so that a wrong path fails in seconds), then `initialize` (every
variable restored through `normzoo.checkpoints.restore`, BatchNorm moving
statistics included, a new classifier when the number of classes differs)
and `set_bn_mode` (what BatchNorm does while fine-tuning).
"""

import dataclasses

from normzoo import bn, checkpoints, models, naming
from normzoo.checkpoints.build import checkpoint_layout
from normzoo.checkpoints.source import stem_kernel
from normzoo.models import resnet

BN_MODES = {
    "train": "BatchNorm normalizes with batch statistics and updates its moving "
    "statistics, as in training from scratch",
    "frozen_stats": "BatchNorm normalizes with its restored moving statistics, which never "
    "change; gamma and beta are trained",
    "frozen": "BatchNorm is fixed: restored moving statistics, gamma and beta never change",
    "recalibrated": "BatchNorm's moving statistics are first re-estimated on the training "
    "data (normzoo.bn.recalibrate over RECALIBRATION_BATCHES batches), then used and kept "
    "as in frozen_stats; gamma and beta are trained",
}
# Batches bn="recalibrated" estimates the statistics from, before training:
# enough for a per-channel mean and variance (each batch contributes
# batch x height x width values per channel), few enough to take seconds.
RECALIBRATION_BATCHES = 16


class InitCheckpointError(ValueError):
    """The init checkpoint cannot start this run; nothing was built or trained."""


@dataclasses.dataclass(frozen=True)
class Initialization:
    """What `initialize` did.

    Attributes:
        checkpoint: The init checkpoint path, as given.
        new_head: Paths of the classifier variables left freshly initialized
            because the checkpoint has another number of classes (or none);
            empty when the checkpoint's classifier was restored.
        report: The `normzoo.checkpoints.RestoreReport`.
        audit: `normzoo.bn.audit` of the model right after the restore.
        test: {"loss", "accuracy"} of the model as restored, on the test
            split, before any training step (and before bn="recalibrated"
            re-estimates the statistics): the baseline of the fine-tuning.
            `normzoo.training.train` measures it; None until measured.
    """

    checkpoint: str
    new_head: tuple
    report: checkpoints.RestoreReport
    audit: tuple
    test: dict | None = None

    def to_json(self):
        """A JSON-serializable dict (written to model_dir/restore_report.json)."""
        report = dataclasses.asdict(self.report)
        report["unrestored_statistics"] = list(self.report.unrestored_statistics)
        return {
            "init_checkpoint": self.checkpoint,
            "new_head": list(self.new_head),
            "audit_after_restore": [str(problem) for problem in self.audit],
            "test_after_restore": self.test,
            "report": report,
        }


def read_init_checkpoint(path, norm, model=None):
    """Reads the checkpoint at `path` and checks that it holds a model with
    normalization `norm` (and, given its name, the architecture of the zoo
    model `model`); returns its `normzoo.checkpoints.source.Source`.

    Raises:
        InitCheckpointError: the checkpoint is missing or unreadable (the
            message names the path), or it holds another normalization or
            architecture (the message names the checkpoint's, and the
            --norm, --model and --layout to pass).
    """
    try:
        source = checkpoints.read(path)
    except checkpoints.RestoreError as error:
        raise InitCheckpointError(f"init_checkpoint={path!r} cannot be read. {error}") from None
    layer_names = list(source.layers)
    found = naming.norm_of(layer_names)
    if found is not None and found != norm:
        raise InitCheckpointError(
            f"init_checkpoint={path!r} holds a model with norm={found!r}, and this run "
            f"builds norm={norm!r}: pass --norm={found}."
        )
    architecture = naming.architecture_of(layer_names)
    if model is not None and architecture is not None and architecture != models.architecture(model):
        raise InitCheckpointError(_architecture_mismatch(path, source, architecture, model))
    return source


def _architecture_mismatch(path, source, architecture, model):
    """The message for an init checkpoint of another architecture than
    `model`'s: the checkpoint's architecture, the zoo names that have it and
    the flags that build it."""
    stem = stem_kernel(source, last=True)[1]
    stage = source.weight(naming.conv(naming.branch(naming.block(2, 1), 1)), "kernel")
    matches = models.names_with(
        architecture,
        stem_channels=None if stem is None else int(stem.value.shape[-1]),
        stage_channels=None if stage is None else int(stage.value.shape[-1]),
    )
    holds = f"a {' or '.join(matches)} ({architecture})" if matches else f"a network of {architecture}"
    message = (
        f"init_checkpoint={path!r} holds {holds}, and --model={model} has "
        f"{models.architecture(model)}. "
    )
    if not matches:
        return message + "No model of the zoo has that architecture (see normzoo.models.names())."
    fixes = []
    for name in matches:
        layout = checkpoint_layout(name, source) if name in resnet.VARIANTS else None
        fixes.append(f"--model={name}" + (f" --layout={layout}" if layout else ""))
    return message + f"Pass {' or '.join(fixes)}."


def checkpoint_inputs(source, model_name):
    """What the init checkpoint `source` fixes about a run of model
    `model_name`: {"preprocess_mode": the input preprocessing its weights
    expect (`RestoreReport.preprocess_mode`), "channels": its first
    convolution's input channels, "layout": its `normzoo.models.resnet`
    layout (ImageNet ResNets only)}, each None where it does not say."""
    _, stem = stem_kernel(source)
    return {
        "preprocess_mode": source.preprocess_mode,
        "channels": None if stem is None else int(stem.value.shape[-2]),
        "layout": (source.layout or source.config_layout) if model_name in resnet.VARIANTS else None,
    }


def _new_head_variables(model, source):
    """The classifier's variable paths if the checkpoint has another number
    of classes than the model (or no classifier), else ()."""
    if naming.CLASSIFIER not in {layer.name for layer in model.layers}:
        return ()
    head = model.get_layer(naming.CLASSIFIER)
    tensor = source.weight(naming.CLASSIFIER, "kernel")
    if tensor is not None and tensor.value.shape[-1] == head.kernel.shape[-1]:
        return ()
    return tuple(variable.path for variable in head.weights)


def initialize(model, path, source):
    """Restores `model` from the init checkpoint at `path`, all or nothing.

    The restore is `normzoo.checkpoints.restore(model, path, strict=True,
    skip=...)`, where `skip` names exactly the classifier's variables
    ("predictions/kernel", "predictions/bias") when the checkpoint (already
    read into `source` by `read_init_checkpoint`) has another number of
    classes or no classifier: a new head for a new task.

    Everything else (BatchNorm moving statistics included) must be restored, or `RestoreError` is raised and the
    model is unchanged.

    Returns:
        An `Initialization`.
    """
    new_head = _new_head_variables(model, source)
    report = checkpoints.restore(model, path, strict=True, skip=new_head)
    return Initialization(
        checkpoint=str(path),
        new_head=new_head,
        report=report,
        audit=tuple(bn.audit(model)),
    )


def set_bn_mode(model, mode):
    """Puts every BatchNorm of `model` in the fine-tuning `mode`, a key of
    `BN_MODES`, with `normzoo.bn.freeze`; returns the names of the layers
    frozen (none for "train").

    Raises:
        ValueError: for an unknown mode, or a freezing mode on a model
            without BatchNorm layers.
    """
    if mode not in BN_MODES:
        raise ValueError(f"bn={mode!r}; choose one of {', '.join(BN_MODES)}.")
    if mode == "train":
        return []
    # "recalibrated" is frozen_stats once the statistics are re-estimated
    # (see normzoo.training.loop).
    frozen = bn.freeze(model, gamma_beta=(mode == "frozen"))
    if not frozen:
        raise ValueError(f"bn={mode!r} needs BatchNorm layers, and model {model.name!r} has none.")
    return frozen
