r"""Fine-tunes a pretrained ResNet, every variable restored (BatchNorm moving
statistics included): the command normzoo-finetune
(`normzoo.commands.finetune`, whose docstring tells the flags' story), for a
source checkout.

    python scripts/finetune.py --init_checkpoint=resnet20_batch_digits
    python scripts/finetune.py --init_checkpoint=checkpoints/resnet20_batch_digits.weights.h5 \
        --invert_images --bn=train --model_dir=runs/finetune_inverted
"""

from normzoo.commands import finetune

if __name__ == "__main__":
    finetune.main()
