"""Step time of normzoo BatchNorm vs keras BatchNormalization, alone: figure
P2 of scripts/benchmark.py, with its flags.

In a small conv net, the same with renorm=True, and a masked sequence model
(Embedding(mask_zero=True) -> BatchNorm -> LSTM), each built with both
layers, trained side by side in alternating rounds so that machine noise
hits both alike (`normzoo.benchmarks.p2_batch_norm`); the figure is the
ratio of the median step times, normzoo / keras (target <= 1.05). Writes
BENCHMARK_LAYERS.md and benchmark_layers.json.

    python scripts/benchmark_layers.py --output_dir=scripts/results
"""

import os

from absl import flags

import _app  # scripts/_app.py

from normzoo.benchmarks import Output, cli, settings

OUTPUT = Output(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    json_name="benchmark_layers.json",
    markdown_name="BENCHMARK_LAYERS.md",
    script="scripts/benchmark_layers.py",
)

cli.define_flags(OUTPUT, ["quick", *settings.used_by(["P2"])])
flags.adopt_module_key_flags(cli)


def main(argv):
    cli.main(argv, OUTPUT, figures=("P2",), compare_onednn=False)


if __name__ == "__main__":
    _app.run(main)
