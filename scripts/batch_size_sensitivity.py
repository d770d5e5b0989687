"""Trains one model at batch sizes from 2 to 256 with BatchNorm, LayerNorm and
SkipInit, and tabulates test accuracy (articles 001 and 003: BatchNorm's
statistics are noisy at small batches, LayerNorm's do not depend on the
batch; De & Smith 2020, Figure 5: BatchNorm's advantage is at large batches).

Every cell sees the same number of training examples (`--examples`, i.e.
`examples // batch_size` steps, one cosine schedule over them) and uses the
learning rate `base_learning_rate * batch_size / base_batch_size` (linear
scaling), optionally capped by `--max_learning_rate`. A non-finite loss is
recorded as "diverged". The defaults (WRN-16-2 on the embedded digits at
their native 8x8, 4 passes over the 1,437 training images) fit about 25
minutes on 2 CPU cores. Writes `<output>.json`, `<output>.md` and
`<output>.png` (test accuracy against batch size).

    pip install "normzoo[plot]"   # matplotlib
    python scripts/batch_size_sensitivity.py --output=scripts/results/batch_size_sensitivity
"""

import os

from absl import app, flags

import _app  # scripts/_app.py
import _grid_flags  # scripts/_grid_flags.py

_NORMS = ("batch", "layer", "skipinit0")  # normzoo.experiments.NORM_VARIANTS

flags.DEFINE_string("model", "wrn_16_2", "Model name (see normzoo.models.names()).")
_grid_flags.define_integer_list(
    "batch_sizes", ["2", "4", "8", "16", "32", "64", "128", "256"], "Batch sizes."
)
_grid_flags.define(_NORMS)
flags.DEFINE_integer("examples", 4 * 1437, "Training examples every cell sees.")
flags.DEFINE_float("base_learning_rate", 0.05, "Learning rate at --base_batch_size.")
flags.DEFINE_integer("base_batch_size", 64, "Batch size of --base_learning_rate.")
flags.DEFINE_float("max_learning_rate", None, "Cap on the scaled learning rate (unset: none).")
flags.DEFINE_string("output", "batch_size_sensitivity", "Output path without extension.")
# --help lists the key flags of the main module; the shared ones are this script's.
flags.adopt_module_key_flags(_grid_flags)
FLAGS = flags.FLAGS


def learning_rate(batch_size):
    """Linear scaling from (--base_batch_size, --base_learning_rate), capped."""
    scaled = FLAGS.base_learning_rate * batch_size / FLAGS.base_batch_size
    if FLAGS.max_learning_rate is not None:
        scaled = min(scaled, FLAGS.max_learning_rate)
    return scaled


def _check_flags():
    """Raises UsageError for a bad number or an unknown model."""
    for name in ("examples", "base_batch_size", "image_size"):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be positive; got {FLAGS[name].value}.")
    for name in ("base_learning_rate", "max_learning_rate"):
        value = FLAGS[name].value
        if value is not None and not value > 0:
            raise app.UsageError(f"--{name} must be positive; got {value}.")
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
    """(labels, TrainConfig) for every batch size x norm of the flags."""
    from normzoo import experiments

    base = _grid_flags.base_config(model=FLAGS.model, epochs=1, schedule="cosine")
    grid = []
    for batch_size in map(int, FLAGS.batch_sizes):
        for norm in FLAGS.norms:
            config = experiments.with_norm(
                base,
                norm,
                batch_size=batch_size,
                steps_per_epoch=FLAGS.examples // batch_size,
                learning_rate=learning_rate(batch_size),
            )
            labels = {"batch_size": batch_size, "norm": norm, "learning_rate": config.learning_rate}
            grid.append((labels, config))
    return grid


def markdown(rows):
    """Batch size x norm tables: test accuracy, training loss, outcome, wall time."""
    from normzoo import experiments

    return experiments.pivot_tables(
        rows,
        "batch_size",
        "norm",
        ["batch size", "learning rate", "steps"],
        lambda size: [size, f"{learning_rate(size):.4g}", FLAGS.examples // size],
    )


def plot(rows, path):
    from normzoo import experiments

    pyplot = experiments.pyplot()
    sizes, norms, table = experiments.pivot(rows, "batch_size", "norm", lambda row: row["test_accuracy"])
    figure, axes = pyplot.subplots(figsize=(6.5, 4.4))
    for column, norm in enumerate(norms):
        accuracy = [line[column] if line[column] is not None else float("nan") for line in table]
        axes.plot(sizes, accuracy, "o-", label=norm)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size (learning rate scaled linearly)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{FLAGS.model} on {FLAGS.dataset}, {FLAGS.examples} training examples per run")
    axes.grid(True, alpha=0.3)
    axes.legend(title="norm")
    experiments.save_figure(figure, path)


def main(argv):
    _check_flags()
    flag_names = [
        "model", "batch_sizes", "norms", "dataset", "image_size", "examples",
        "base_learning_rate", "base_batch_size", "max_learning_rate", "weight_decay", "seed",
    ]
    rows, paths = _grid_flags.run_and_write(
        argv,
        cells,
        flag_names,
        markdown,
        learning_rate_rule="base_learning_rate * batch_size / base_batch_size, capped at "
        "max_learning_rate; one cosine schedule over examples // batch_size steps",
    )
    plot(rows, f"{FLAGS.output}.png")
    print(f"Wrote {', '.join(paths)} and {FLAGS.output}.png")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _app.run(main)
