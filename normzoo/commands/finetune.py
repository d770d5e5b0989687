r"""normzoo-finetune: fine-tunes a pretrained ResNet, every variable restored
(BatchNorm moving statistics included). With only --init_checkpoint: the
shipped ResNet-20 on the embedded digits dataset, a minute or two on 2 CPU
cores.

    normzoo-finetune --init_checkpoint=resnet20_batch_digits
    normzoo-finetune --init_checkpoint=path/to/resnet50.safetensors --model=resnet50 \
        --dataset=cifar10 --data_dir=/data/tfds --image_size=224

--init_checkpoint is a file or directory in any format that
`normzoo.checkpoints.restore` reads, or the name of a checkpoint shipped
with normzoo (`normzoo.checkpoints.shipped()`). --bn=frozen_stats (the
default) normalizes with the restored statistics and never updates them,
--bn=train re-estimates them on the new data, --bn=frozen also fixes gamma
and beta, --bn=recalibrated re-estimates them once on the first training
batches (`normzoo.bn.recalibrate`) and then keeps them. On data whose
statistics differ from the pretraining data's (e.g. --invert_images) use
--bn=train: frozen statistics of another domain can make fine-tuning
collapse. A classifier with another number of classes than the
checkpoint's is new (--num_classes, default: the dataset's). Before the
first step the restored model's test accuracy is printed: the baseline,
also in metrics.json as initial_test_accuracy. What was restored and
skipped is in --model_dir/restore_report.json; checkpoints, metrics.json
and flags.json are written there too, and re-running the same command
resumes from --model_dir's last checkpoint.
"""

from normzoo.commands import train

# The fine-tuning defaults: a few epochs at a lower rate than training from
# scratch, BatchNorm statistics frozen.
DEFAULTS = dict(
    epochs=3,
    learning_rate=0.01,
    weight_decay=5e-5,
    bn="frozen_stats",
    model_dir="runs/finetune",
)


def main():
    """The console script normzoo-finetune (scripts/finetune.py)."""
    train.run("normzoo-finetune", doc=__doc__, defaults=DEFAULTS, finetune_flags=True)
