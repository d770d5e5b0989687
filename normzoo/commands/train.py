r"""normzoo-train: trains a model of the normzoo zoo. With no flags: ResNet-20
with BatchNorm on the embedded digits dataset, about a minute on 2 CPU cores.

    normzoo-train
    normzoo-train --model=wrn_16_4 --norm=skipinit --dataset=cifar10 \
        --data_dir=/data/tfds --strategy=mirrored --jit_compile --sync_bn

Re-running the same command resumes from the last checkpoint in --model_dir.
The flags are those of `normzoo.training.cli` (the fields of `TrainConfig`).
"""

import sys

from normzoo import backends
from normzoo.commands import app


def run(program, *, doc, defaults=None, finetune_flags=False):
    """Defines the training flags (with `defaults`, a dict of `TrainConfig`
    fields, as their defaults) and runs `normzoo.training.cli.main` as an
    absl program. Without TensorFlow: one line naming the extra to install,
    exit status 1."""
    try:
        backends.require_installed_tensorflow(program)
    except backends.BackendError as error:
        sys.stderr.write(f"{program}: error: {error}\n")
        sys.exit(1)
    # normzoo.training imports TensorFlow: only once it is known to be there.
    from normzoo.training import TrainConfig, cli

    cli.define_flags(TrainConfig.from_flat(**(defaults or {})), finetune_flags=finetune_flags)
    app.run(cli.main, key_flags=cli, doc=doc)


def main():
    """The console script normzoo-train (scripts/train.py)."""
    run("normzoo-train", doc=__doc__)
