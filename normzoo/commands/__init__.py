"""normzoo's commands: the console scripts an install puts on the PATH.

    normzoo-train       trains a model of the zoo (scripts/train.py)
    normzoo-finetune    fine-tunes a pretrained ResNet (scripts/finetune.py)
    python -m normzoo   lists them; `python -m normzoo train ...` runs one

Each is an absl-flag program (`normzoo.commands.app.run`) whose flags are
those of `normzoo.training.cli`. They need TensorFlow (the extra
`normzoo[tensorflow]`); without it they end with one line naming the
extra to install. The scripts under scripts/ are these same commands,
for a source checkout.
"""

# Console script -> (the `python -m normzoo` subcommand, module with its
# `main`, what it does). setup.cfg's [options.entry_points] lists the same.
COMMANDS = {
    "normzoo-train": (
        "train", "normzoo.commands.train",
        "Trains a model of the zoo (default: ResNet-20 with BatchNorm on the embedded digits).",
    ),
    "normzoo-finetune": (
        "finetune", "normzoo.commands.finetune",
        "Fine-tunes a pretrained ResNet, every variable (BatchNorm statistics included) restored.",
    ),
}
