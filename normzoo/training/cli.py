"""The absl flags of scripts/train.py and scripts/finetune.py, defined once.

    from normzoo.training import cli
    cli.define_flags(defaults=TrainConfig.from_flat(...), finetune_flags=True)
    app.run(cli.main)

Every flag is a field of `TrainConfig` (in its group), with the same name:
`TrainConfig.flat()`'s keys; `main` turns the parsed flags into a
`TrainConfig` (`TrainConfig.from_flat`) and calls `train`.
"""

import sys
import types

from absl import app, flags, logging

from normzoo import data
from normzoo.models import resnet
from normzoo.naming import NORMS
from normzoo.training import distribute, finetune, loop
from normzoo.training.config import BN_MODES, INPUT_SHARDING, OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig

FLAGS = flags.FLAGS


def _enum_help(choices):
    return "; ".join(f"{name}: {text}" for name, text in choices.items())


def define_flags(defaults=None, *, finetune_flags=False):
    """Defines the training flags in absl's `FLAGS`, with the values of the
    `TrainConfig` `defaults` as defaults (None: `TrainConfig()`'s).

    With `finetune_flags=True` also the fine-tuning flags: the required
    --init_checkpoint, --bn and --num_classes.
    """
    # The defaults by their flag names: d.model, d.epochs, ...
    d = types.SimpleNamespace(**(defaults or TrainConfig()).flat())
    flags.DEFINE_string("model", d.model, "Model name (see normzoo.models.names()).")
    flags.DEFINE_enum("norm", d.norm, NORMS, "Normalization in every residual block.")
    flags.DEFINE_string("dataset", d.dataset, "TFDS dataset name; 'digits' is embedded.")
    flags.DEFINE_string("data_dir", d.data_dir, "TFDS data directory holding prepared datasets.")
    flags.DEFINE_integer("image_size", d.image_size or 0, "Resize images to this size (0: native).")
    flags.DEFINE_bool(
        "invert_images", d.invert_images,
        "Invert pixel values (255 - value): a domain shift of the dataset.",
    )
    flags.DEFINE_enum(
        "preprocess_mode", d.preprocess_mode, data.preprocessing.PREPROCESS_MODES,
        "Input normalization: tf: pixels scaled to [-1, 1]; torch: [0, 1], then ImageNet's "
        "mean/std (torchvision, timm); caffe: BGR minus ImageNet's mean pixel "
        "(keras.applications ResNet50); vgg: RGB minus TF-slim's VGG means (slim resnet_v1). "
        "Unset: what --init_checkpoint's weights expect (its restore report says), else tf. "
        "flags.json records the one used.",
    )
    flags.DEFINE_integer("batch_size", d.batch_size, "Global batch size (over all replicas).")
    flags.DEFINE_integer("epochs", d.epochs, "Number of epochs.")
    flags.DEFINE_integer(
        "steps_per_epoch", d.steps_per_epoch or 0, "Steps per epoch (0: training examples // batch)."
    )
    flags.DEFINE_float("learning_rate", d.learning_rate, "Peak learning rate (global batch).")
    flags.DEFINE_enum("schedule", d.schedule, SCHEDULES, "Learning-rate schedule.")
    flags.DEFINE_float("warmup_epochs", d.warmup_epochs, "Linear warm-up (cosine schedule).")
    flags.DEFINE_enum("optimizer", d.optimizer, OPTIMIZERS, "Optimizer.")
    flags.DEFINE_float("weight_decay", d.weight_decay, "Decoupled weight decay (0: none).")
    flags.DEFINE_float("skipinit_alpha", d.skipinit_alpha, "Initial SkipInit scalar (--norm=skipinit only).")
    flags.DEFINE_enum("strategy", d.strategy, distribute.STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_string("tpu", d.tpu, "TPU address (--strategy=tpu).")
    flags.DEFINE_bool("jit_compile", d.jit_compile, "XLA-compile the training step.")
    flags.DEFINE_enum(
        "mixed_precision", d.mixed_precision, ["float16", "bfloat16"], "Mixed precision policy."
    )
    flags.DEFINE_bool("sync_bn", d.sync_bn, "Synchronize BatchNorm statistics over replicas.")
    flags.DEFINE_enum(
        "input_sharding", d.input_sharding, INPUT_SHARDING,
        "pipeline: each worker reads its own part of the data; global_batch: every worker builds "
        "the same global batches and keeps its slice (same run for any number of workers).",
    )
    flags.DEFINE_string("model_dir", d.model_dir, "Checkpoints, logs and metrics go here.")
    flags.DEFINE_integer(
        "checkpoint_steps", d.checkpoint_steps, "Also checkpoint every N steps (0: per epoch only)."
    )
    flags.DEFINE_integer("seed", d.seed, "Random seed (initialization and data order).")
    flags.DEFINE_bool(
        "deterministic", d.deterministic,
        "Deterministic ops: the same flags give bit-identical weights, optimizer state and "
        "metrics (slower steps).",
    )
    flags.DEFINE_enum(
        "layout", d.layout, list(resnet.LAYOUTS),
        "Layout of an ImageNet ResNet (resnet50, ...): where its strides and biases are "
        "(keras: keras.applications; torchvision: torchvision and timm; slim: TF-slim). "
        "Unset: --init_checkpoint's, else the model's default.",
    )
    if not finetune_flags:
        return
    flags.DEFINE_string(
        "init_checkpoint", d.init_checkpoint,
        "Checkpoint to start from, in any format of normzoo.checkpoints.restore (.weights.h5, "
        ".keras, keras.applications .h5, a model_dir/checkpoints directory or prefix, TF-slim "
        ".ckpt, torchvision/timm .safetensors or .pth). It must hold --model with --norm; every "
        "variable is restored. Its layout, input channels and preprocessing are taken.",
    )
    flags.mark_flag_as_required("init_checkpoint")
    flags.DEFINE_integer(
        "num_classes", d.num_classes or 0,
        "Classes of the fine-tuned classifier (0: the dataset's). A new classifier is made "
        "when the checkpoint has another number of classes.",
    )
    flags.DEFINE_enum("bn", d.bn, BN_MODES, _enum_help(finetune.BN_MODES))


def config_from_flags():
    """The `TrainConfig` the parsed flags describe (0 means unset for the
    integer flags whose field may be None)."""
    values = {name: FLAGS[name].value for name in TrainConfig().flat() if name in FLAGS}
    for name in ("image_size", "steps_per_epoch", "num_classes"):
        if name in values:
            values[name] = values[name] or None
    return TrainConfig.from_flat(**values)


def main(argv):
    """An absl `main`: trains as the flags say; exit status 3 if the loss
    diverged, 2 if the dataset is not prepared in --data_dir, and
    `app.UsageError` (naming the flag, the value and the fix) for an
    invalid configuration, before anything is written."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # progress is printed; keep TFDS quiet
    try:
        loop.train(config_from_flags())
    except ConfigError as error:
        raise app.UsageError(str(error)) from None
    except loop.TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except data.DatasetNotPreparedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
