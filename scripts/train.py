"""Trains a model of the normzoo zoo. With no flags: ResNet-20 with BatchNorm on
the embedded digits dataset, a few minutes on 2 CPU cores.

    python scripts/train.py
    python scripts/train.py --model=wrn_16_4 --norm=skipinit --dataset=cifar10 \
        --data_dir=/data/tfds --strategy=mirrored --jit_compile --sync_bn

Re-running the same command resumes from the last checkpoint in --model_dir.
"""

import dataclasses
import sys

from absl import app, flags, logging

from normzoo.training import loop

_DEFAULTS = loop.TrainConfig()

flags.DEFINE_string("model", _DEFAULTS.model, "Model name (see normzoo.models.names()).")
flags.DEFINE_enum("norm", _DEFAULTS.norm, loop.NORMS, "Normalization in every residual block.")
flags.DEFINE_string("dataset", _DEFAULTS.dataset, "TFDS dataset name; 'digits' is embedded.")
flags.DEFINE_string("data_dir", None, "TFDS data directory holding prepared datasets.")
flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "Resize images to this size (0: native).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size (over all replicas).")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Number of epochs.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0: training examples // batch).")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Peak learning rate (global batch).")
flags.DEFINE_enum("schedule", _DEFAULTS.schedule, loop.SCHEDULES, "Learning-rate schedule.")
flags.DEFINE_float("warmup_epochs", _DEFAULTS.warmup_epochs, "Linear warm-up (cosine schedule).")
flags.DEFINE_enum("optimizer", _DEFAULTS.optimizer, loop.OPTIMIZERS, "Optimizer.")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "Decoupled weight decay (0: none).")
flags.DEFINE_float("skipinit_alpha", None, "Initial SkipInit scalar (--norm=skipinit only).")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, loop.distribute.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU address (--strategy=tpu).")
flags.DEFINE_bool("jit_compile", _DEFAULTS.jit_compile, "XLA-compile the training step.")
flags.DEFINE_enum("mixed_precision", None, ["float16", "bfloat16"], "Mixed precision policy.")
flags.DEFINE_bool("sync_bn", _DEFAULTS.sync_bn, "Synchronize BatchNorm statistics over replicas.")
flags.DEFINE_enum(
    "input_sharding", _DEFAULTS.input_sharding, loop.INPUT_SHARDING,
    "pipeline: each worker reads its own part of the data; global_batch: every worker builds "
    "the same global batches and keeps its slice (same run for any number of workers).",
)
flags.DEFINE_string("model_dir", _DEFAULTS.model_dir, "Checkpoints, logs and metrics go here.")
flags.DEFINE_integer("checkpoint_steps", _DEFAULTS.checkpoint_steps, "Also checkpoint every N steps (0: per epoch only).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (initialization and data order).")
FLAGS = flags.FLAGS


def config_from_flags():
    """The TrainConfig the parsed flags describe."""
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(loop.TrainConfig) if f.name in FLAGS}
    values["image_size"] = values["image_size"] or None
    values["steps_per_epoch"] = values["steps_per_epoch"] or None
    return loop.TrainConfig(**values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # progress is printed; keep TFDS quiet
    try:
        loop.train(config_from_flags())
    except loop.ConfigError as error:
        raise app.UsageError(str(error))
    except loop.TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    app.run(main)
