"""Trains one model at batch sizes from 2 to 256 with BatchNorm, LayerNorm and
SkipInit, each at its own tuned learning rate, and tests the articles'
batch-size claims (articles 001 and 003: BatchNorm's statistics are noisy at
small batches, LayerNorm's do not depend on the batch; De & Smith 2020,
Figure 5: BatchNorm's advantage at large batches comes from tolerating
larger learning rates).

Every cell (one batch size, one normalization) sees the same number of
training examples (`--examples`, i.e. `examples // batch_size` steps, one
cosine schedule over them) and is trained at every rate of
--learning_rates scaled linearly to its batch size (`rate * batch_size /
base_batch_size`, so the grid follows the linear-scaling rule and the
selection says where a normalization departs from it), with the first of
--seeds, on the training split minus its last --validation_fraction. The
rate with the best accuracy on that held-out part is selected (never the
test set), and the cell is trained again at that rate with the other
seeds. A non-finite loss is recorded as "diverged"; a cell that diverges
at every rate says so. The claims table
(`normzoo_lab.experiments.batch_size_claims`) gives each claim's verdict with
its numbers.

Budget: the defaults (WRN-16-2 on the embedded digits at their native 8x8,
batch sizes 2 to 256, 3 passes over the 1,150 training images left after
validation (3,450 examples per run), 3 norms x 4 rates + 1 more seed at the
selected rate: 120 runs) are estimated at about 50-60 minutes on 2 idle
cores. How: WRN-16-2 with BatchNorm was timed here while the machine was
loaded (load 8 on 2 cores), as process CPU time (an upper bound of an idle
run's wall time): about 7 s of building, tracing and evaluation per run,
plus 0.034 s per step at batch 2, 0.07 s at 32 and 0.135 s at 128, i.e.
about 68, 40, 24, 18, 15, 12, 11 and 10 s per run from batch 2 to 256, x 15
runs per batch size = 49 minutes; the previous single-rate sweep (24 runs
of 5,748 examples in 17 minutes on shared cores, 42 s per run) scaled to
3,450 examples gives about 30 s per run, 60 minutes. Cut to fit: one of
the four passes of that sweep, a fifth rate and a third seed.

Writes `<output>.json`, `<output>.md` and `<output>.png` (test accuracy and
selected rate against batch size).

    pip install "normzoo[plot]"   # matplotlib
    python lab/batch_size_sensitivity.py --output=lab/results/batch_size_sensitivity
"""

import os

from absl import app, flags

from normzoo.commands import app as command_app
import _grid_flags  # lab/_grid_flags.py

_NORMS = ("batch", "layer", "skipinit0")  # normzoo_lab.experiments.NORM_VARIANTS

flags.DEFINE_string("model", "wrn_16_2", "Model name (see normzoo.models.names()).")
_grid_flags.define_integer_list(
    "batch_sizes", ["2", "4", "8", "16", "32", "64", "128", "256"], "Batch sizes."
)
_grid_flags.define(_NORMS)
flags.DEFINE_integer("examples", 3 * 1150, "Training examples every cell sees.")
_grid_flags.define_learning_rates(
    ["0.025", "0.05", "0.1", "0.2"],
    "Peak learning rates at --base_batch_size, the grid; each batch size scales them linearly.",
)
flags.DEFINE_integer("base_batch_size", 64, "Batch size of --learning_rates.")
flags.DEFINE_integer(
    "small_batch", 8, "Largest batch size of the LayerNorm-vs-BatchNorm small-batch claim."
)
flags.DEFINE_string("output", "batch_size_sensitivity", "Output path without extension.")
# --help lists the key flags of the main module; the shared ones are this script's.
flags.adopt_module_key_flags(_grid_flags)
FLAGS = flags.FLAGS


def learning_rates(batch_size):
    """The grid at `batch_size`: --learning_rates scaled linearly from
    --base_batch_size."""
    return [rate * batch_size / FLAGS.base_batch_size for rate in _grid_flags.learning_rates()]


def _check_flags():
    """Raises UsageError for a bad number or an unknown model."""
    for name in ("examples", "base_batch_size", "image_size", "small_batch"):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be positive; got {FLAGS[name].value}.")
    too_large = [size for size in map(int, FLAGS.batch_sizes) if size > FLAGS.examples]
    if too_large:
        raise app.UsageError(
            f"--batch_sizes {too_large} exceed --examples={FLAGS.examples}: no full step."
        )
    from normzoo import models

    try:
        models.check_name(FLAGS.model)
    except ValueError as error:
        raise app.UsageError(f"--model: {error}") from None


def cells():
    """(labels, TrainConfig, learning rates) for every batch size x norm of the flags."""
    from normzoo_lab import experiments

    base = _grid_flags.base_config(model=FLAGS.model, epochs=1, schedule="cosine")
    return [
        (
            {"batch_size": batch_size, "norm": norm},
            experiments.with_norm(
                base, norm, batch_size=batch_size, steps_per_epoch=FLAGS.examples // batch_size
            ),
            learning_rates(batch_size),
        )
        for batch_size in map(int, FLAGS.batch_sizes)
        for norm in FLAGS.norms
    ]


def claims(summaries):
    from normzoo_lab import experiments

    return experiments.batch_size_claims(summaries, small_batch=FLAGS.small_batch)


def markdown(rows, summaries, verdicts):
    """Claims, then batch size x norm tables, then every (cell, rate)."""
    from normzoo_lab import experiments

    return experiments.grid_markdown(
        rows,
        summaries,
        "batch_size",
        "norm",
        ["batch size", "steps"],
        lambda size: [size, FLAGS.examples // size],
        verdicts,
    )


def main(argv):
    _check_flags()
    flag_names = [
        "model", "batch_sizes", "norms", "dataset", "image_size", "examples", "learning_rates",
        "base_batch_size", "small_batch", "weight_decay", "seeds", "validation_fraction",
        "deterministic",
    ]
    record, paths = _grid_flags.run_and_write(
        argv,
        cells,
        ["batch_size", "norm"],
        flag_names,
        markdown,
        claims,
        learning_rate_rule="each of learning_rates * batch_size / base_batch_size; one cosine "
        "schedule over examples // batch_size steps",
    )
    from normzoo_lab import experiments

    experiments.plot_summaries(
        record["summaries"],
        "batch_size",
        f"{FLAGS.output}.png",
        xlabel="batch size",
        title=f"{FLAGS.model} on {FLAGS.dataset}, {FLAGS.examples} training examples per run, "
        "rate tuned per cell",
    )
    print(f"Wrote {', '.join(paths)} and {FLAGS.output}.png")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command_app.run(main)
