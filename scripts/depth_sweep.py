"""Trains WRN-n-2 at several depths with each normalization (De & Smith 2020,
Tables 1-2) and tabulates final training loss, test accuracy and divergence.

Every cell of a row (one depth) sees the same data, schedule and learning
rate; only the normalization changes: BatchNorm, SkipInit with alpha = 0
(its default), SkipInit with alpha = 1 (Table 2: the branches are not
downscaled) and no normalization at all. A non-finite loss is recorded as
"diverged". The defaults (WRN-16/40/100-2 on the embedded digits at their
native 8x8 resolution, 120 steps) took 21 minutes on 2 shared CPU cores.
WRN-1000-2 is not among them: there it took 13 minutes to trace its first
training step and about 9 s per step after that, so a real run of 12 cells
would take hours. Writes `<output>.json` (flags, environment, every cell)
and `<output>.md` (tables).

    python scripts/depth_sweep.py --output=scripts/results/depth_sweep
    python scripts/depth_sweep.py --depths=1000 --norms=skipinit0 --epochs=1 --steps_per_epoch=10
"""

import os

from absl import app, flags

import _app  # scripts/_app.py
import _grid_flags  # scripts/_grid_flags.py

_NORMS = ("batch", "skipinit0", "skipinit1", "none")  # normzoo.experiments.NORM_VARIANTS

_grid_flags.define_integer_list("depths", ["16", "40", "100"], "Depths n (6N + 4) of WRN-n-<width>.")
flags.DEFINE_integer("width", 2, "Widen factor k of WRN-n-k.")
_grid_flags.define(_NORMS)
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("epochs", 3, "Epochs (the test set is evaluated after each).")
flags.DEFINE_integer("steps_per_epoch", 40, "Training steps per epoch.")
flags.DEFINE_float("learning_rate", 0.05, "Peak learning rate, the same for every cell.")
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine", "step"], "Learning-rate schedule.")
flags.DEFINE_string("output", "depth_sweep", "Output path without extension (.json and .md).")
# --help lists the key flags of the main module; the shared ones are this script's.
flags.adopt_module_key_flags(_grid_flags)
FLAGS = flags.FLAGS


def _check_flags():
    """Raises UsageError for a model that does not exist or a bad number."""
    from normzoo import models

    for depth in FLAGS.depths:
        try:
            models.check_name(f"wrn_{depth}_{FLAGS.width}")
        except ValueError as error:
            raise app.UsageError(f"--depths/--width: {error}") from None
    for name in ("batch_size", "epochs", "steps_per_epoch"):
        if FLAGS[name].value <= 0:
            raise app.UsageError(f"--{name} must be positive; got {FLAGS[name].value}.")
    if not FLAGS.learning_rate > 0:
        raise app.UsageError(f"--learning_rate must be positive; got {FLAGS.learning_rate}.")


def cells():
    """(labels, TrainConfig) for every depth x norm of the flags."""
    from normzoo import experiments

    base = _grid_flags.base_config(
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch,
        learning_rate=FLAGS.learning_rate,
        schedule=FLAGS.schedule,
    )
    return [
        (
            {"depth": depth, "norm": norm},
            experiments.with_norm(base, norm, model=f"wrn_{depth}_{FLAGS.width}"),
        )
        for depth in map(int, FLAGS.depths)
        for norm in FLAGS.norms
    ]


def markdown(rows):
    """Depth x norm tables: test accuracy, training loss, outcome, wall time."""
    from normzoo import experiments

    return experiments.pivot_tables(
        rows, "depth", "norm", ["model"], lambda depth: [f"WRN-{depth}-{FLAGS.width}"]
    )


def main(argv):
    _check_flags()
    flag_names = [
        "depths", "width", "norms", "dataset", "image_size", "batch_size", "epochs",
        "steps_per_epoch", "learning_rate", "schedule", "weight_decay", "seed",
    ]
    _, paths = _grid_flags.run_and_write(argv, cells, flag_names, markdown)
    print(f"Wrote {' and '.join(paths)}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _app.run(main)
