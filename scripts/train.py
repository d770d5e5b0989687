"""Trains a model of the normzoo zoo. With no flags: ResNet-20 with BatchNorm on
the embedded digits dataset, a few minutes on 2 CPU cores.

    python scripts/train.py
    python scripts/train.py --model=wrn_16_4 --norm=skipinit --dataset=cifar10 \
        --data_dir=/data/tfds --strategy=mirrored --jit_compile --sync_bn

Re-running the same command resumes from the last checkpoint in --model_dir.
The flags are those of `normzoo.training.cli` (the fields of `TrainConfig`).
"""

from absl import app

from normzoo.training import cli

cli.define_flags()

if __name__ == "__main__":
    app.run(cli.main)
