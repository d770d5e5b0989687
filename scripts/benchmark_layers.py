"""Step time of a small conv net: normzoo BatchNorm vs keras BatchNormalization.

Both nets are built, compiled and timed side by side in one process, in
alternating rounds so that machine noise hits both alike
(`normzoo.benchmarking.compare_batch_norms`); the figure is the median step
time over rounds, and the ratio normzoo / keras (target <= 1.05). This is
figure P2 of scripts/benchmark.py, which measures it with everything else.

    python scripts/benchmark_layers.py --output_dir=scripts/results
"""

import json
import os

from absl import app, flags

import _app  # scripts/_app.py

flags.DEFINE_integer("batch_size", 32, "Images per training step.")
flags.DEFINE_integer("image_size", 32, "Height and width of the input images.")
flags.DEFINE_integer("rounds", 7, "Alternating timing rounds per net and mode.")
flags.DEFINE_integer("steps_per_round", 10, "Training steps timed per round.")
flags.DEFINE_list("modes", ["eager", "graph", "xla"], "Execution modes to time.")
flags.DEFINE_string(
    "output_dir",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    "Where benchmark_layers.json is written.",
)
FLAGS = flags.FLAGS

TARGET = 1.05


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from normzoo import benchmarking

    for mode in FLAGS.modes:
        if mode not in benchmarking.MODES:
            raise app.UsageError(f"--modes: unknown mode {mode!r}; choose from {benchmarking.MODES}.")
    results = []
    for mode in FLAGS.modes:
        times = benchmarking.compare_batch_norms(
            mode,
            batch_size=FLAGS.batch_size,
            image_size=FLAGS.image_size,
            rounds=FLAGS.rounds,
            steps_per_round=FLAGS.steps_per_round,
        )
        ratio, lowest, highest = benchmarking.ratio(
            times, "normzoo.BatchNorm", "keras.BatchNormalization"
        )
        results.append(
            {
                "mode": mode,
                "normzoo_step_ms": 1e3 * times["normzoo.BatchNorm"].median,
                "keras_step_ms": 1e3 * times["keras.BatchNormalization"].median,
                "ratio": ratio,
                "ratio_range_over_rounds": [lowest, highest],
                "target": f"<= {TARGET}",
                "met": ratio <= TARGET,
            }
        )
        print(f"{mode}: normzoo {results[-1]['normzoo_step_ms']:.1f} ms, keras "
              f"{results[-1]['keras_step_ms']:.1f} ms, ratio {ratio:.3f}", flush=True)

    machine = benchmarking.machine()
    config = {name: FLAGS[name].value for name in ("batch_size", "image_size", "rounds", "steps_per_round")}
    print()
    print(f"| mode | normzoo BatchNorm (ms/step) | keras BatchNormalization (ms/step) | ratio | target <= {TARGET} |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['normzoo_step_ms']:.1f} | {r['keras_step_ms']:.1f} | "
              f"{r['ratio']:.3f} | {'met' if r['met'] else 'MISSED'} |")
    print(f"\nmachine: {machine}\nconfig: {config}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "benchmark_layers.json")
    with open(path, "w") as f:
        json.dump({"machine": machine, "config": config, "results": results}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    _app.run(main)
