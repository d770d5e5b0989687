r"""Fine-tunes a pretrained ResNet, every variable restored (BatchNorm moving
statistics included). With only --init_checkpoint: the shipped ResNet-20 on
the embedded digits dataset, a minute or two on 2 CPU cores.

    python scripts/finetune.py --init_checkpoint=checkpoints/resnet20_batch_digits.weights.h5
    python scripts/finetune.py --init_checkpoint=checkpoints/resnet20_batch_digits.weights.h5 \
        --invert_images --bn=train --model_dir=runs/finetune_inverted

--bn=frozen_stats (the default) normalizes with the restored statistics and
never updates them, --bn=train re-estimates them on the new data, --bn=frozen
also fixes gamma and beta, --bn=recalibrated re-estimates them once on the
first training batches (normzoo.bn.recalibrate) and then keeps them. On data whose statistics differ from the
pretraining data's (e.g. --invert_images) use --bn=train: frozen statistics
of another domain can make fine-tuning collapse (see
scripts/results/finetune_experiment.md). A classifier with another number of classes than
the checkpoint's is new (--num_classes, default: the dataset's). Before the
first step the restored model's test accuracy is printed: the baseline,
also in metrics.json as initial_test_accuracy. What was
restored and skipped is in --model_dir/restore_report.json; checkpoints,
metrics.json and flags.json are written there too, and re-running the same
command resumes from --model_dir's last checkpoint.
"""

import os

# oneDNN kernels made CPU training 1.43x faster here (scripts/results/BENCHMARKS.md),
# but TensorFlow leaves them off on AMD CPUs. Set before TensorFlow is
# imported; an explicit TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import flags

import _app  # scripts/_app.py

from normzoo.training import TrainConfig, cli

cli.define_flags(
    TrainConfig(
        epochs=3,
        learning_rate=0.01,
        weight_decay=5e-5,
        bn="frozen_stats",
        model_dir="runs/finetune",
    ),
    finetune_flags=True,
)
# --help lists the key flags of the main module; cli's flags are this script's.
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    _app.run(cli.main)
