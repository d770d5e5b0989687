"""Plots signal propagation at initialization (De & Smith 2020, Figure 4).

For one deep network built with each normalization, measures at every
residual block the variance of the skip path and of the residual branch (see
`normzoo_lab.signal_propagation`) on a batch of standard-normal images, in
training mode, and writes a PNG of variance against block index, with the
numbers and the flags beside it as JSON (same name, .json).

The fourth panel is the residual-branch scaling: the variance of block i's
branch relative to its skip path, against i counted within the stage (each
stage starts afresh from a projected skip path). The article's argument is
that BatchNorm makes this ratio about 1/i, i.e. scales branch i by
1/sqrt(i) in standard deviation; the JSON records the ratios and, per
normalization, the least-squares slope of log(ratio) on log(i) over blocks
i >= 2 of every stage (-1 for exact 1/i scaling).

    pip install "normzoo[plot]"   # matplotlib
    python lab/signal_propagation.py --output=signal_propagation.png
"""

import json
import os

from absl import app, flags

from normzoo.commands import app as command_app

flags.DEFINE_string("model", "wrn_100_2", "Model name (see normzoo.models.names()).")
flags.DEFINE_list("norms", ["batch", "skipinit", "none"], "Normalizations to compare.")
flags.DEFINE_integer("batch_size", 64, "Images in the measured batch.")
flags.DEFINE_integer("image_size", 32, "Height and width of the images.")
flags.DEFINE_integer("seed", 0, "Seed of the initialization and the images.")
flags.DEFINE_string("output", "signal_propagation.png", "Path of the PNG; the JSON goes beside it.")
FLAGS = flags.FLAGS


def index_in_stage(blocks):
    """The unit number u of every block named "conv{stage}_block{u}"."""
    return [int(block.rsplit("_block", 1)[1]) for block in blocks]


def branch_scaling(signals):
    """Branch-to-skip variance ratios, and the slope of log(ratio) on
    log(index in stage) over the blocks with index >= 2 (None unless there
    are two distinct such indices and every such ratio is positive: SkipInit's
    branches are 0 at initialization)."""
    import numpy as np

    ratio = signals.branch_variance / signals.skip_variance
    index = np.array(index_in_stage(signals.blocks))
    later = index >= 2
    slope = None
    if len(set(index[later])) >= 2 and np.all(ratio[later] > 0):
        slope = float(np.polyfit(np.log(index[later]), np.log(ratio[later]), 1)[0])
    return ratio, slope


def _numbers(signals):
    ratio, slope = branch_scaling(signals)
    return {
        "blocks": list(signals.blocks),
        "skip_variance": signals.skip_variance.tolist(),
        "branch_variance": signals.branch_variance.tolist(),
        "index_in_stage": index_in_stage(signals.blocks),
        "branch_to_skip_ratio": ratio.tolist(),
        "branch_scaling_slope": slope,
    }


def plot(results, model_name, path):
    from normzoo_lab import experiments

    pyplot = experiments.pyplot()
    figure, (linear_axes, log_axes, branch_axes, ratio_axes) = pyplot.subplots(
        1, 4, figsize=(20, 4.4)
    )
    for norm, signals in results.items():
        index = range(1, len(signals.blocks) + 1)
        linear_axes.plot(index, signals.skip_variance, label=norm)
        log_axes.plot(index, signals.skip_variance, label=norm)
        branch_axes.plot(index, signals.branch_variance, label=norm)
        ratio, slope = branch_scaling(signals)
        if slope is not None:
            ratio_axes.plot(
                index_in_stage(signals.blocks), ratio, "o", markersize=3,
                label=f"{norm} (log-log slope {slope:.2f})",
            )
    # On a linear scale the normalized networks' straight lines (the paper's
    # Figure 4) would be flattened by the unnormalized one's explosion.
    bounded = [signals.skip_variance.max() for norm, signals in results.items() if norm != "none"]
    if bounded:
        linear_axes.set_ylim(0, 1.2 * max(bounded))
    # A new stage starts where the resolution changes and the skip path is
    # projected: the BatchNorm skip variance restarts there.
    first_signals = next(iter(results.values()))
    stage_starts = [
        i + 1 for i, block in enumerate(first_signals.blocks) if block.endswith("_block1") and i
    ]
    panels = (
        (linear_axes, "skip path before the addition", "linear"),
        (log_axes, "skip path before the addition", "log"),
        (branch_axes, "residual branch (skipinit: 0)", "log"),
    )
    for axes, title, scale in panels:
        for start in stage_starts:
            axes.axvline(start, color="grey", linestyle=":", linewidth=1)
        axes.set_yscale(scale)
        axes.set_xlabel("residual block")
        axes.set_ylabel("variance (mean over channels)")
        axes.set_title(f"{title}, {scale} scale")
        axes.grid(True, alpha=0.3)
    log_axes.legend(title="norm", loc="upper left")
    longest_stage = max(index_in_stage(first_signals.blocks))
    reference = range(1, longest_stage + 1)
    ratio_axes.plot(reference, [1 / i for i in reference], "k--", label="1/i")
    ratio_axes.set_xscale("log")
    ratio_axes.set_yscale("log")
    ratio_axes.set_xlabel("block i within its stage")
    ratio_axes.set_ylabel("branch variance / skip-path variance")
    ratio_axes.set_title("residual-branch scaling (std ~ 1/sqrt(i))")
    ratio_axes.grid(True, alpha=0.3)
    ratio_axes.legend(loc="lower left")
    figure.suptitle(f"{model_name} at initialization (dotted: a new stage, projected skip path)")
    experiments.save_figure(figure, path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import keras
    import numpy as np

    from normzoo import models
    from normzoo_lab import signal_propagation

    models.check_name(FLAGS.model)
    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    images = (
        np.random.default_rng(FLAGS.seed)
        .standard_normal((FLAGS.batch_size, *shape))
        .astype("float32")
    )
    results = {}
    for norm in FLAGS.norms:
        keras.utils.set_random_seed(FLAGS.seed)
        model = models.build(FLAGS.model, norm=norm, input_shape=shape)
        results[norm] = signal_propagation.signal_propagation(model, images)

    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    plot(results, FLAGS.model, FLAGS.output)
    record = {
        "flags": {
            name: FLAGS[name].value
            for name in ("model", "norms", "batch_size", "image_size", "seed")
        },
        "results": {norm: _numbers(signals) for norm, signals in results.items()},
    }
    with open(os.path.splitext(FLAGS.output)[0] + ".json", "w") as file:
        json.dump(record, file, indent=1)
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
    command_app.run(main)
