"""Starting a run from a pretrained checkpoint, and checking what it predicts.

`normzoo.training.train` calls `read_init_checkpoint` (before anything is
built, so that a wrong path fails in seconds), then `initialize` (every
variable restored through `normzoo.checkpoints.restore`, BatchNorm moving
statistics included, a new classifier when the number of classes differs)
and `set_bn_mode` (what BatchNorm does while fine-tuning).

`evaluate_batch_dependence` measures the symptom of lost or stale BatchNorm
statistics: accuracy on mixed-class batches against accuracy on batches
that each hold one class, in inference mode and with batch statistics.
"""

import dataclasses

import tensorflow as tf
from absl import logging

from normzoo import bn, checkpoints, data, models, naming
from normzoo.checkpoints.build import checkpoint_layout
from normzoo.checkpoints.source import stem_kernel
from normzoo.models import resnet
from normzoo.training.steps import EvalStep, evaluate

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
INIT_VARIABLES = {
    "all": "every variable of the checkpoint, BatchNorm moving statistics included",
    "trainable": "the trainable variables only, leaving the moving statistics at their "
    "initial values (mean 0, variance 1): a known bug, reproduced for experiments only",
}


class InitCheckpointError(ValueError):
    """The init checkpoint cannot start this run; nothing was built or trained."""


@dataclasses.dataclass(frozen=True)
class Initialization:
    """What `initialize` did.

    Attributes:
        checkpoint: The init checkpoint path, as given.
        init_variables: A key of `INIT_VARIABLES`.
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
    init_variables: str
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
            "init_variables": self.init_variables,
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


def initialize(model, path, source, *, init_variables="all"):
    """Restores `model` from the init checkpoint at `path`, all or nothing.

    The restore is `normzoo.checkpoints.restore(model, path, strict=True,
    skip=...)`, where `skip` names exactly:

    - the classifier's variables ("predictions/kernel", "predictions/bias"),
      when the checkpoint (already read into `source` by
      `read_init_checkpoint`) has another number of classes or no
      classifier: a new head for a new task;
    - with `init_variables="trainable"`, every non-trainable variable (the
      BatchNorm moving statistics), which keep their initial values: the
      trainable-only restore that loses them, which a warning announces.

    Everything else must be restored, or `RestoreError` is raised and the
    model is unchanged.

    Returns:
        An `Initialization`.
    """
    if init_variables not in INIT_VARIABLES:
        raise ValueError(
            f"init_variables={init_variables!r}; choose one of {', '.join(INIT_VARIABLES)}."
        )
    new_head = _new_head_variables(model, source)
    skip = list(new_head)
    if init_variables == "trainable":
        skip += [v.path for v in model.non_trainable_weights if v.path not in new_head]
    report = checkpoints.restore(model, path, strict=True, skip=skip)
    initialization = Initialization(
        checkpoint=str(path),
        init_variables=init_variables,
        new_head=new_head,
        report=report,
        audit=tuple(bn.audit(model)),
    )
    if init_variables == "trainable" and report.unrestored_statistics:
        logging.warning(
            "init_variables='trainable': %d BatchNorm moving statistic(s) of %s were NOT "
            "restored and keep their initial values (mean 0, variance 1): the model "
            "predicts badly in inference mode until the statistics are re-estimated. Use "
            "init_variables='all' except to study this bug.",
            len(report.unrestored_statistics),
            path,
        )
    return initialization


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


def evaluate_batch_dependence(
    model,
    dataset,
    *,
    batch_size,
    data_dir=None,
    image_size=None,
    invert=False,
    seed=0,
):
    """Top-1 accuracy on the test split in mixed-class and in single-class
    batches, in inference mode and with batch statistics.

    A model whose BatchNorm statistics were lost or are stale predicts well
    on batches of varied images and badly on batches of similar ones. In
    inference mode (`training=False`) a BatchNorm network normalizes with
    its moving statistics, so every prediction is independent of the rest
    of its batch and both accuracies are equal, whatever the statistics are
    worth. With
    batch statistics (the model run with `training=True`, as a TF1 graph
    built with `is_training=True` runs at test time) each batch is
    normalized with its own statistics, and a batch of one class loses what
    tells its images from the others'. BatchNorm layers with frozen
    statistics (or not trainable) keep their moving statistics in both modes.

    Single device (the default strategy). No variable of the model changes.

    Args:
        model: A Keras model mapping images to logits.
        dataset: A dataset name for `normzoo.data.load`.
        batch_size: Examples per batch.
        data_dir, image_size, invert: As for `normzoo.data.load`.
        seed: Seed of the order of the mixed-class batches.

    Returns:
        {"mixed": {"inference": accuracy, "batch_statistics": accuracy},
         "single_class": {...}}.
    """
    info = data.info(dataset, data_dir=data_dir, image_size=image_size)
    load_args = dict(
        global_batch_size=batch_size,
        training=False,
        data_dir=data_dir,
        image_size=image_size,
        invert=invert,
    )
    mixed = data.load(dataset, info.test_split, **load_args).unbatch()
    mixed = mixed.shuffle(info.test_examples, seed=seed, reshuffle_each_iteration=False)
    batches = {
        "mixed": mixed.batch(batch_size),
        "single_class": data.load(dataset, info.test_split, single_class_batches=True, **load_args),
    }
    strategy = tf.distribute.get_strategy()
    steps = {
        "inference": EvalStep(model, strategy),
        "batch_statistics": EvalStep(model, strategy, batch_statistics=True),
    }
    return {
        batching: {mode: evaluate(step, stream)["accuracy"] for mode, step in steps.items()}
        for batching, stream in batches.items()
    }

