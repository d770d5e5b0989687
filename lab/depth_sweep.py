"""Trains WRN-n-2 at several depths with each normalization, each at its own
tuned learning rate (De & Smith 2020, Tables 1-2), and tests the SkipInit
article's depth claims.

Every cell (one depth, one normalization: BatchNorm, SkipInit with alpha =
0, alpha = 1/sqrt(d) for d residual blocks, alpha = 1 (Table 2: the
branches are not downscaled), no normalization) is trained at every peak
learning rate of --learning_rates (one cosine schedule) with the first of
--seeds, on the training split minus its last --validation_fraction. The
rate with the best accuracy on that held-out part is selected (never the
test set), and the cell is trained again at that rate with the other
seeds. A non-finite loss is recorded as "diverged"; a cell that diverges
at every rate says so. The claims table (`normzoo_lab.experiments.depth_claims`)
gives each claim's verdict with its numbers.

Budget: the defaults (WRN-16/40/100-2 on the embedded digits at their
native 8x8, batch 32, one cosine schedule over 180 steps, 5 norms x 4 rates
+ 1 more seed at the selected rate: 75 runs) are estimated at <= 84 minutes
on 2 idle cores, about 60-70 expected. How: one run of each depth with
BatchNorm (the slowest norm) was timed here at 10 and 60 steps while the
machine was loaded (load 8 on 2 cores), as process CPU time, which bounds
an idle run's wall time from above (an idle run gets both cores): per run
about 7 / 14 / 37 s of building, tracing and evaluation plus 0.07 / 0.25 /
0.47 s per step for WRN-16 / 40 / 100, i.e. 20 / 59 / 122 s at 180 steps,
x 25 runs per depth = 84 minutes if every run is as slow as BatchNorm's and
none stops early. SkipInit and no normalization step faster, and a run
that diverges stops early (alpha = 1 at depth 40 and 100 in the
single-rate sweep: 20 and 95 s, against 183 and 316 s for BatchNorm). Cut to fit: 60 of
the 240 steps of the issue's WRN-16 check, a fifth rate (0.4 or 0.0125:
the grid spans 8x), a third seed, and WRN-1000-2 (13 minutes to trace its
first step, about 9 s per step after that on these cores). A cell whose
selected rate is an end of the grid is marked in the tables.

Writes `<output>.json` (flags, splits, environment, claims, one summary per
cell, every run), `<output>.md` (claims and tables) and `<output>.png`.

    python lab/depth_sweep.py --output=lab/results/depth_sweep
    python lab/depth_sweep.py --depths=1000 --norms=skipinit0 --learning_rates=0.05 --seeds=0 --epochs=1 --steps_per_epoch=10
"""

import os

from absl import app, flags

from normzoo.commands import app as command_app
import _grid_flags  # lab/_grid_flags.py

_NORMS = ("batch", "skipinit0", "skipinit_rsqrt", "skipinit1", "none")  # experiments.NORM_VARIANTS

_grid_flags.define_integer_list("depths", ["16", "40", "100"], "Depths n (6N + 4) of WRN-n-<width>.")
flags.DEFINE_integer("width", 2, "Widen factor k of WRN-n-k.")
_grid_flags.define(_NORMS)
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("epochs", 1, "Epochs (the test set is evaluated after each).")
flags.DEFINE_integer("steps_per_epoch", 180, "Training steps per epoch.")
_grid_flags.define_learning_rates(
    ["0.025", "0.05", "0.1", "0.2"], "Peak learning rates, the grid every cell is trained at."
)
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine", "step"], "Learning-rate schedule.")
flags.DEFINE_float(
    "margin", 0.02, "Largest test-accuracy difference the claims count as 'matches'."
)
flags.DEFINE_string("output", "depth_sweep", "Output path without extension (.json, .md, .png).")
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
    if not FLAGS.margin >= 0:
        raise app.UsageError(f"--margin must be >= 0; got {FLAGS.margin}.")


def cells():
    """(labels, TrainConfig, learning rates) for every depth x norm of the flags."""
    from normzoo_lab import experiments
    from normzoo.models import wide_resnet

    base = _grid_flags.base_config(
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch,
        schedule=FLAGS.schedule,
    )
    return [
        (
            {"depth": depth, "norm": norm},
            experiments.with_norm(
                base, norm, num_blocks=wide_resnet.num_blocks(depth), model=f"wrn_{depth}_{FLAGS.width}"
            ),
            _grid_flags.learning_rates(),
        )
        for depth in map(int, FLAGS.depths)
        for norm in FLAGS.norms
    ]


def claims(summaries):
    from normzoo_lab import experiments

    return experiments.depth_claims(summaries, batch_size=FLAGS.batch_size, margin=FLAGS.margin)


def markdown(rows, summaries, verdicts):
    """Claims, then depth x norm tables, then every (cell, rate)."""
    from normzoo_lab import experiments

    return experiments.grid_markdown(
        rows, summaries, "depth", "norm", ["model"], lambda depth: [f"WRN-{depth}-{FLAGS.width}"], verdicts
    )


def main(argv):
    _check_flags()
    flag_names = [
        "depths", "width", "norms", "dataset", "image_size", "batch_size", "epochs",
        "steps_per_epoch", "learning_rates", "schedule", "weight_decay", "seeds",
        "validation_fraction", "margin", "deterministic",
    ]
    record, paths = _grid_flags.run_and_write(
        argv, cells, ["depth", "norm"], flag_names, markdown, claims
    )
    from normzoo_lab import experiments

    experiments.plot_summaries(
        record["summaries"],
        "depth",
        f"{FLAGS.output}.png",
        xlabel="depth n of WRN-n-" + str(FLAGS.width),
        title=f"{FLAGS.dataset}, batch {FLAGS.batch_size}, "
        f"{FLAGS.epochs * FLAGS.steps_per_epoch} steps, rate tuned per cell",
    )
    print(f"Wrote {', '.join(paths)} and {FLAGS.output}.png")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command_app.run(main)
