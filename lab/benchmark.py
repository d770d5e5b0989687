"""Benchmarks normzoo against Keras and against this machine's limits.

One run measures every figure, prints a table and writes BENCHMARKS.md and
benchmark.json (the numbers, the flags and the machine) to --output_dir:

  P1  ResNet-50 training images/s, normzoo (keras.applications layout) /
      keras.applications.ResNet50, same batch, same step code, tf.function
      with and without jit_compile                               target >= 1.0
  P2  normzoo BatchNorm / keras BatchNormalization step time, eager, graph,
      XLA, in a small conv net, in the same with renorm=True, and in a
      masked sequence model (Embedding(mask_zero=True) -> BatchNorm ->
      LSTM)                                                      target <= 1.05
  P3  inference speed-up of normzoo.bn.fold on the P1 ResNet-50  target >= 1.3
  P4  step time with synchronized / unsynchronized BatchNorm on 2 replicas
      (MirroredStrategy over 2 logical CPU devices, in a subprocess, since
      logical devices must be set before TensorFlow starts)      target <= 1.15
  P5  restore of a ResNet-50 .weights.h5 with full verification (every
      variable checked, every tensor's sha256; also timed: the same
      restore of a Keras-written file, which has no checksums)  target < 2 s
      and the build time of WRN-1000-2                          target < 30 s
  P6  achieved training FLOP/s of P1 / this machine's float32
      matmul FLOP/s                                              target >= 40%
  P7  training step time and XLA compile time of WRN-n-2 against the number
      of residual blocks: least-squares line, R^2, residuals     target R^2 >= 0.95
  P8  inference with the replicas' average moving statistics / each
      replica's own (MirroredStrategy, 2 logical CPUs)          target <= 1.02
  P9  the main job (scripts/train.py's default run, 10 epochs): wall time /
      sum of step times                                          target <= 1.25
      normzoo train / an equivalent Keras model.fit              target <= 1.0
      largest gap between epochs beyond the evaluation, 1 device and
      MirroredStrategy over 2 logical CPU devices                target <= 0.5 s
  P10 normzoo BatchNorm / keras BatchNormalization step time under Keras'
      JAX backend (jax.jit), P2's conv net, in a subprocess      target <= 1.05
  P11 the main job's training step with --deterministic / with default
      ops (deterministic TensorFlow ops), one device             target <= 1.25
  P12 one epoch of ResNet-20 on Fashion-MNIST (Debian's dataset-fashion-mnist):
      normzoo train / an equivalent Keras model.fit, wall time, with
      each side's images/s                                       target <= 1.0
  P13 BatchNorm against the memory limit: one training forward + backward
      of the layer alone on a (32, 56, 56, 64) float32 tensor, normzoo /
      Keras in TensorFlow graph, TensorFlow XLA, JAX jit, PyTorch eager and
      torch.compile, with each side's effective bandwidth (8 passes of the
      tensor / step time) and its fraction of a NumPy copy's   target <= 1.0
      normzoo's XLA step / its graph step                        target <= 1.0

Ratios come from candidates timed in alternating rounds in the same process
(`normzoo_lab.benchmarking.compare`), so machine noise reaches both alike. With
--compare_onednn, ResNet-50 training is also timed with TF_ENABLE_ONEDNN_OPTS=0
and =1 in alternating subprocesses, with the numerical difference.

Each figure is a module of `normzoo_lab.benchmarks`; the flags are the fields
of `normzoo_lab.benchmarks.Settings`.

    python lab/benchmark.py                    # the full run
    python lab/benchmark.py --quick            # tiny sizes, about two minutes
    python lab/benchmark.py --figures=P1,P6 --resnet_image_size=224
"""

import os

from absl import flags

from normzoo.commands import app as command_app

from normzoo_lab.benchmarks import Output, cli

OUTPUT = Output(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))

cli.define_flags(OUTPUT)
flags.adopt_module_key_flags(cli)


def main(argv):
    cli.main(argv, OUTPUT)


if __name__ == "__main__":
    command_app.run(main)
