r"""Trains a model of the normzoo zoo. With no flags: ResNet-20 with BatchNorm on
the embedded digits dataset, a few minutes on 2 CPU cores.

    python scripts/train.py
    python scripts/train.py --model=wrn_16_4 --norm=skipinit --dataset=cifar10 \
        --data_dir=/data/tfds --strategy=mirrored --jit_compile --sync_bn

Re-running the same command resumes from the last checkpoint in --model_dir.
The flags are those of `normzoo.training.cli` (the fields of `TrainConfig`).
"""

import os

# oneDNN kernels made CPU training 1.43x faster here (scripts/results/BENCHMARKS.md),
# but TensorFlow leaves them off on AMD CPUs. Set before TensorFlow is
# imported; an explicit TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import flags

import _app  # scripts/_app.py

from normzoo.training import cli

cli.define_flags()
# --help lists the key flags of the main module; cli's flags are this script's.
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    _app.run(cli.main)
