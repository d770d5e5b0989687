r"""Trains a model of the normzoo zoo: the command normzoo-train
(`normzoo.commands.train`), for a source checkout. With no flags: ResNet-20
with BatchNorm on the embedded digits dataset, about a minute on 2 CPU cores.

    python scripts/train.py
    python scripts/train.py --model=wrn_16_4 --norm=skipinit --dataset=cifar10 \
        --data_dir=/data/tfds --strategy=mirrored --jit_compile --sync_bn

Re-running the same command resumes from the last checkpoint in --model_dir.
The flags are those of `normzoo.training.cli` (the fields of `TrainConfig`).
"""

from normzoo.commands import train

if __name__ == "__main__":
    train.main()
