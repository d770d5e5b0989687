"""Article 002 as an experiment: fine-tune the shipped ResNet-20 (BatchNorm,
trained on digits) on inverted digits after a full restore and after a
trainable-only restore, and test it on mixed-class and single-class batches.

    python lab/finetune_experiment.py     # ~5 minutes on 2 CPU cores

The shifted task is the digits with inverted intensities (dark strokes on a
light background; `--invert_images`), same labels. In the model's [-1, 1]
input scale an inverted image is exactly the negated image, so every
channel's mean at the first BatchNorm flips sign: a domain shift that lives
in exactly the statistics BatchNorm keeps, while the digits stay learnable
from the pretrained features.

Arms, each `normzoo.training.train` with `init_checkpoint` (the library
restores every variable; for a trainable-only restore the arm starts from
the file `normzoo_lab.lost_statistics.without_statistics` writes: the
checkpoint with its moving statistics at their initial values, the state
that restore leaves):

    a        full restore,            bn=frozen_stats
    b        full restore,            bn=train
    c        trainable-only restore,  bn=frozen_stats  (BatchNorm in inference
                                                       mode while fine-tuning)
    c_train  trainable-only restore,  bn=train         (what the article's
                                                       colleague ran: statistics
                                                       re-estimated from 0/1)
    d        full restore,            bn=recalibrated  (statistics re-estimated
                                                       on the new data, then
                                                       frozen)
    c_recal  trainable-only restore,  bn=recalibrated  (lost statistics
                                                       re-estimated before
                                                       fine-tuning)

and two references without fine-tuning: the pretrained model as restored,
and the same with its statistics re-estimated on the inverted training
images (`normzoo.bn.recalibrate`). Every model is tested with
`normzoo_lab.batch_dependence.evaluate_batch_dependence` (mixed-class and single-class
test batches, in inference mode and with batch statistics) and
`normzoo.bn.audit`. Writes `--output_dir`/finetune_experiment.json and
finetune_experiment_table.md; the runs are kept in --work_dir (re-running
reuses finished runs).
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

import normzoo
from normzoo.commands import app as command_app
from normzoo.training import TrainConfig, TrainingDiverged, train
from normzoo_lab import lost_statistics
from normzoo_lab.batch_dependence import evaluate_batch_dependence

_CHECKPOINTS = os.path.join(os.path.dirname(__file__), "..", "checkpoints")

flags.DEFINE_string(
    "init_checkpoint", os.path.join(_CHECKPOINTS, "resnet20_batch_digits.weights.h5"),
    "The pretrained checkpoint (a ResNet-20 with BatchNorm of checkpoints/).",
)
flags.DEFINE_bool(
    "invert_images", True, "Fine-tune and test on inverted digits (--noinvert_images: the "
    "checkpoint's own task, no shift).",
)
flags.DEFINE_string("output_name", "finetune_experiment", "Stem of the result files.")
flags.DEFINE_integer("epochs", 6, "Fine-tuning epochs (the test set is evaluated after each).")
flags.DEFINE_integer("steps_per_epoch", 8, "Steps per epoch.")
flags.DEFINE_integer("batch_size", 32, "Training and test batch size.")
flags.DEFINE_enum("optimizer", "adam", ["momentum", "adam"], "Optimizer of every arm.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (cosine schedule).")
flags.DEFINE_integer("recalibration_batches", 20, "Batches for the recalibrated reference.")
flags.DEFINE_string("work_dir", "runs/finetune_experiment", "Model directories of the arms.")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results"), "Results go here.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool(
    "deterministic", True,
    "Deterministic ops in every arm (TrainConfig.run.deterministic): an arm repeats bit for bit.",
)
FLAGS = flags.FLAGS

_TASKS = {
    True: "digits with inverted intensities (same labels)",
    False: "digits, the checkpoint's own task (no shift)",
}

ARMS = {
    "a": ("full restore + frozen_stats", dict(restore="all", bn="frozen_stats")),
    "b": ("full restore + train statistics", dict(restore="all", bn="train")),
    "c": ("trainable-only restore + frozen_stats", dict(restore="trainable", bn="frozen_stats")),
    "c_train": ("trainable-only restore + train statistics", dict(restore="trainable", bn="train")),
    "d": ("full restore + recalibrated statistics", dict(restore="all", bn="recalibrated")),
    "c_recal": (
        "trainable-only restore + recalibrated statistics",
        dict(restore="trainable", bn="recalibrated"),
    ),
}


def _manifest_entry(path):
    with open(os.path.join(_CHECKPOINTS, "manifest.json")) as f:
        entries = {entry["file"]: entry for entry in json.load(f)}
    return entries[os.path.basename(path)]


def _measure(model, entry):
    return {
        "accuracy": evaluate_batch_dependence(
            model, entry["dataset"], batch_size=FLAGS.batch_size, image_size=entry["image_size"],
            invert=FLAGS.invert_images, seed=FLAGS.seed,
        ),
        "audit": [str(problem) for problem in normzoo.bn.audit(model)],
    }


def _references(entry):
    """The pretrained model on the inverted test set, as restored and with
    recalibrated statistics."""
    info = normzoo.data.info(entry["dataset"], image_size=entry["image_size"])
    model = normzoo.build(entry["model"], weights=FLAGS.init_checkpoint, input_shape=info.image_shape)
    references = {"pretrained": ("pretrained, no fine-tuning", _measure(model, entry))}
    train_images = normzoo.data.load(
        entry["dataset"], "train", global_batch_size=FLAGS.batch_size, training=True,
        image_size=entry["image_size"], invert=FLAGS.invert_images, seed=FLAGS.seed,
    )
    normzoo.bn.recalibrate(model, train_images, FLAGS.recalibration_batches)
    references["recalibrated"] = (
        "pretrained, statistics recalibrated on the fine-tuning images", _measure(model, entry)
    )
    return references


def _init_checkpoint(entry, restore):
    """The checkpoint an arm starts from: the pretrained one for a full
    restore; for a trainable-only restore, that checkpoint as the restore
    leaves it (moving statistics at their initial values), written once
    into --work_dir."""
    if restore == "all":
        return FLAGS.init_checkpoint
    path = os.path.join(FLAGS.work_dir, "trainable_only_restore.weights.h5")
    if not os.path.exists(path):
        os.makedirs(FLAGS.work_dir, exist_ok=True)
        info = normzoo.data.info(entry["dataset"], image_size=entry["image_size"])
        lost_statistics.without_statistics(
            FLAGS.init_checkpoint, path, model=entry["model"], norm=entry["norm"],
            input_shape=info.image_shape,
        )
    return path


def _finetune(entry, arm, settings):
    config = TrainConfig.from_flat(
        model=entry["model"],
        norm=entry["norm"],
        dataset=entry["dataset"],
        image_size=entry["image_size"],
        invert_images=FLAGS.invert_images,
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch,
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        weight_decay=5e-5,
        init_checkpoint=_init_checkpoint(entry, settings["restore"]),
        model_dir=os.path.join(FLAGS.work_dir, "inverted" if FLAGS.invert_images else "no_shift", arm),
        seed=FLAGS.seed,
        deterministic=FLAGS.deterministic,
        verbose=False,
        bn=settings["bn"],
    )
    print(f"[{arm}] fine-tuning: {settings}", flush=True)
    try:
        result = train(config)
    except TrainingDiverged as error:
        return {"diverged": str(error)}, None
    measured = _measure(result.model, entry)
    measured["history"] = [
        {"step": h["step"], "test_accuracy": h["test_accuracy"]} for h in result.metrics["history"]
    ]
    return measured, result.model


def _max_difference(model_a, model_b, statistics):
    """The largest difference between the two models' moving statistics
    (`statistics=True`) or between their other variables."""
    return max(
        float(np.abs(a.numpy() - b.numpy()).max())
        for a, b in zip(model_a.weights, model_b.weights)
        if a.path.endswith(("moving_mean", "moving_variance")) == statistics
    )


def _table(results):
    lines = [
        "| arm | restore + BatchNorm while fine-tuning | inference, mixed batches | inference, "
        "single-class batches | batch statistics, mixed | batch statistics, single-class | "
        "audit: layers with uninitialized statistics |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, (title, measured) in results.items():
        if "diverged" in measured:
            lines.append(f"| {arm} | {title} | diverged | | | | |")
            continue
        accuracy = measured["accuracy"]
        cells = [
            f"{accuracy[batching][mode]:.3f}"
            for mode in ("inference", "batch_statistics")
            for batching in ("mixed", "single_class")
        ]
        lines.append(f"| {arm} | {title} | {' | '.join(cells)} | {len(measured['audit'])} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    entry = _manifest_entry(FLAGS.init_checkpoint)
    results = _references(entry)
    models = {}
    for arm, (title, settings) in ARMS.items():
        measured, models[arm] = _finetune(entry, arm, settings)
        results[arm] = (title, measured)
    comparison = {}
    if models["b"] is not None and models["c_train"] is not None:
        # Training-mode BatchNorm never reads the moving statistics, so b and
        # c_train take the same steps; only their statistics differ.
        comparison = {
            "max_abs_difference_other_variables": _max_difference(models["b"], models["c_train"], False),
            "max_abs_difference_moving_statistics": _max_difference(models["b"], models["c_train"], True),
        }
    table = _table(results)
    print(table)
    for arm in ("b", "c_train"):
        history = results[arm][1].get("history", [])
        print(f"{arm} inference accuracy by step: "
              + ", ".join(f"{h['step']}: {h['test_accuracy']:.3f}" for h in history))
    print(json.dumps(comparison, indent=2))
    command = "python lab/finetune_experiment.py " + " ".join(
        f"--{name}={FLAGS[name].value}"
        for name in (
            "invert_images", "output_name", "epochs", "steps_per_epoch", "batch_size", "optimizer",
            "learning_rate", "seed", "deterministic",
        )
    )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, f"{FLAGS.output_name}.json"), "w") as f:
        json.dump(
            {
                "command": command,
                "init_checkpoint": os.path.relpath(FLAGS.init_checkpoint),
                "task": _TASKS[FLAGS.invert_images],
                "results": {arm: {"title": title, **measured} for arm, (title, measured) in results.items()},
                "b_vs_c_train": comparison,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
            f,
            indent=2,
        )
    with open(os.path.join(FLAGS.output_dir, f"{FLAGS.output_name}_table.md"), "w") as f:
        f.write(f"`{command}`\n\nTest accuracy on {_TASKS[FLAGS.invert_images]} (360 test images):\n\n{table}\n")
    return 0


if __name__ == "__main__":
    command_app.run(main)
