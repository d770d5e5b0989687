"""Share of a normalized ResNet's output variance carried by short paths at
initialization (De & Smith 2020, Figure 3), and the article's claim that for
10,000 residual blocks 97% of the variance comes from paths through 15 or
fewer residual branches.

The model and its two conventions for the first block are in
`normzoo_lab.path_lengths`: s = 1 ("the activation before block i has
variance i", blocks counted from 1) and s = 0 (blocks counted from 0, the
first block's input carries no variance). The exact distribution is checked
against a Monte Carlo measurement on random deep linear BatchNorm ResNets.
Writes `<output>.json`, `<output>.md` and `<output>.png` (the CDF for
several depths). Runs in well under a minute.

    pip install "normzoo[plot]"   # matplotlib
    python lab/path_lengths.py --output=lab/results/path_lengths
"""

import os

from absl import app, flags

from normzoo.commands import app as command_app

flags.DEFINE_list("depths", ["10", "30", "100", "1000", "10000"], "Numbers of residual blocks d.")
flags.DEFINE_list("lengths", ["5", "10", "15", "20"], "Path lengths k of the table's columns.")
flags.DEFINE_integer("article_depth", 10000, "d of the article's claim.")
flags.DEFINE_integer("article_length", 15, "k of the article's claim.")
flags.DEFINE_list("monte_carlo_depths", ["10", "30"], "Depths of the Monte Carlo check ('' for none).")
flags.DEFINE_integer("monte_carlo_width", 256, "Channels of the Monte Carlo networks.")
flags.DEFINE_integer("monte_carlo_batch", 512, "Batch of the Monte Carlo networks.")
flags.DEFINE_integer("monte_carlo_seeds", 2, "Random networks averaged per Monte Carlo depth.")
flags.DEFINE_string("output", "path_lengths", "Output path without extension (.json, .md, .png).")
FLAGS = flags.FLAGS
for _name, _allow_empty in (("depths", False), ("lengths", False), ("monte_carlo_depths", True)):
    flags.register_validator(
        _name,
        lambda values, allow_empty=_allow_empty: (allow_empty or bool(values))
        and all(value.isdigit() and int(value) > 0 for value in values if value),
        message=f"--{_name} must be a list of positive integers.",
    )

# Share of the variance through the first block's input, in units of a
# branch's variance: the two readings of "block i's input has variance i".
CONVENTIONS = {"counted from 1 (s=1)": 1.0, "counted from 0 (s=0)": 0.0}
_ARTICLE_SHARE = 0.97
_PLOTTED_LENGTHS = 30
_STORED_LENGTHS = 60


def plot(exact, monte_carlo, path):
    from normzoo_lab import experiments

    pyplot = experiments.pyplot()
    figure, (cdf_axes, density_axes) = pyplot.subplots(1, 2, figsize=(12, 4.4))
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for (depth, by_convention), color in zip(exact.items(), colors * 4):
        for (convention, share), style in zip(by_convention.items(), ("-", "--")):
            lengths = range(min(len(share), _PLOTTED_LENGTHS + 1))
            cumulative = [sum(share[: k + 1]) for k in lengths]
            label = f"d={depth}, {convention}"
            cdf_axes.plot(lengths, cumulative, style, color=color, label=label)
            density_axes.plot(lengths, share[: len(lengths)], style, color=color)
        if depth in monte_carlo:
            measured = monte_carlo[depth]["share"]
            density_axes.plot(
                range(len(measured) - 1), measured[:-1], "o", color=color, markersize=4,
                label=f"d={depth}: linear BN ResNet (Monte Carlo)",
            )
    cdf_axes.axvline(FLAGS.article_length, color="grey", linestyle=":", linewidth=1)
    cdf_axes.axhline(_ARTICLE_SHARE, color="grey", linestyle=":", linewidth=1)
    cdf_axes.set_title("share of output variance from paths through <= k branches")
    density_axes.set_title("share of output variance from paths through k branches")
    for axes in (cdf_axes, density_axes):
        axes.set_xlabel("k (residual branches on the path)")
        axes.grid(True, alpha=0.3)
    cdf_axes.legend(fontsize=7, loc="lower right")
    density_axes.legend(fontsize=7, loc="upper right")
    figure.suptitle(
        "Normalized ResNet of d blocks at initialization (dotted: the article's 97% at k = 15)"
    )
    experiments.save_figure(figure, path)


def markdown(exact, lengths, article, monte_carlo):
    from normzoo_lab import experiments

    rows = []
    for depth, by_convention in exact.items():
        for convention, share in by_convention.items():
            mean = sum(k * value for k, value in enumerate(share))
            rows.append([depth, convention, mean, *(sum(share[: k + 1]) for k in lengths)])
    text = "Share of the output variance from paths through at most k residual branches:\n\n"
    text += experiments.markdown_table(
        ["blocks d", "first block", "mean path length", *(f"k <= {k}" for k in lengths)], rows
    )
    text += (
        f"\nThe article's claim, d = {article['depth']}, k <= {article['length']}: "
        f"{article['claimed']:.0%} claimed; "
        + "; ".join(f"{convention}: {share:.4f}" for convention, share in article["model"].items())
        + ".\n"
    )
    if monte_carlo:
        mc_rows = []
        for depth, measured in monte_carlo.items():
            exact_share = exact_for_monte_carlo(depth)
            for k in range(min(8, len(measured["share"]) - 1)):
                mc_rows.append([depth, k, measured["share"][k], exact_share[k]])
        text += (
            "\nMonte Carlo check: random linear BatchNorm ResNets at initialization "
            f"(width {FLAGS.monte_carlo_width}, batch {FLAGS.monte_carlo_batch}, "
            f"{FLAGS.monte_carlo_seeds} networks each), output split exactly by path length, "
            "against the exact share (s = 1, the input has variance 1):\n\n"
        )
        text += experiments.markdown_table(
            ["blocks d", "k", "Monte Carlo share", "exact share"], mc_rows
        )
    return text


def exact_for_monte_carlo(depth):
    from normzoo_lab import path_lengths

    return path_lengths.path_length_distribution(path_lengths.branch_probabilities(depth, 1.0))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    depths = [int(value) for value in FLAGS.depths]
    lengths = [int(value) for value in FLAGS.lengths]
    monte_carlo_depths = [int(value) for value in FLAGS.monte_carlo_depths if value]
    for name in ("article_depth", "monte_carlo_width", "monte_carlo_batch", "monte_carlo_seeds"):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be positive; got {FLAGS[name].value}.")
    if FLAGS.article_length < 0:
        raise app.UsageError(f"--article_length must be >= 0; got {FLAGS.article_length}.")

    import numpy as np

    from normzoo_lab import experiments
    from normzoo_lab import path_lengths

    exact = {
        depth: {
            convention: path_lengths.path_length_distribution(
                path_lengths.branch_probabilities(depth, input_variance)
            )
            for convention, input_variance in CONVENTIONS.items()
        }
        for depth in depths
    }
    article = {
        "depth": FLAGS.article_depth,
        "length": FLAGS.article_length,
        "claimed": _ARTICLE_SHARE,
        "model": {
            convention: path_lengths.share_within(
                FLAGS.article_depth, FLAGS.article_length, input_variance
            )
            for convention, input_variance in CONVENTIONS.items()
        },
    }
    monte_carlo = {}
    for depth in monte_carlo_depths:
        runs = [
            path_lengths.linear_bn_resnet_monte_carlo(
                depth,
                width=FLAGS.monte_carlo_width,
                batch_size=FLAGS.monte_carlo_batch,
                max_length=min(depth, 20),
                seed=seed,
            )
            for seed in range(FLAGS.monte_carlo_seeds)
        ]
        monte_carlo[depth] = {
            "share": np.mean([run["share"] for run in runs], axis=0).tolist(),
            "total_variance": float(np.mean([run["total_variance"] for run in runs])),
            "skip_variance": np.mean([run["skip_variance"] for run in runs], axis=0).tolist(),
        }

    record = {
        "flags": {
            name: FLAGS[name].value
            for name in (
                "depths", "lengths", "article_depth", "article_length", "monte_carlo_depths",
                "monte_carlo_width", "monte_carlo_batch", "monte_carlo_seeds",
            )
        },
        "conventions": CONVENTIONS,
        "article": article,
        # share[k] for k <= _STORED_LENGTHS (the rest is below 1e-12 for d <= 10,000).
        "exact_share": {
            str(depth): {
                convention: share[: _STORED_LENGTHS + 1].tolist()
                for convention, share in by_convention.items()
            }
            for depth, by_convention in exact.items()
        },
        "monte_carlo": {str(depth): value for depth, value in monte_carlo.items()},
    }
    paths = experiments.write_results(
        FLAGS.output, record, markdown(exact, lengths, article, monte_carlo)
    )
    plot(exact, monte_carlo, f"{FLAGS.output}.png")
    print(f"Wrote {', '.join(paths)} and {FLAGS.output}.png")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command_app.run(main)
