"""Step time of normzoo BatchNorm vs keras BatchNormalization, alone: figure
P2 of lab/benchmark.py, with its flags.

In a small conv net, the same with renorm=True, and a masked sequence model
(Embedding(mask_zero=True) -> BatchNorm -> LSTM), each built with both
layers, trained side by side in alternating rounds so that machine noise
hits both alike (`normzoo_lab.benchmarks.p2_batch_norm`); the figure is the
ratio of the median step times, normzoo / keras (target <= 1.05). Writes
BENCHMARK_LAYERS.md and benchmark_layers.json.

    python lab/benchmark_layers.py --output_dir=lab/results
"""

import os

from absl import flags

from normzoo.commands import app as command_app

from normzoo_lab.benchmarks import Output, cli, settings

OUTPUT = Output(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    json_name="benchmark_layers.json",
    markdown_name="BENCHMARK_LAYERS.md",
    script="lab/benchmark_layers.py",
)

cli.define_flags(OUTPUT, ["quick", *settings.used_by(["P2"])])
flags.adopt_module_key_flags(cli)


def main(argv):
    cli.main(argv, OUTPUT, figures=("P2",), compare_onednn=False)


if __name__ == "__main__":
    command_app.run(main)
