r"""Article 002 as an experiment: fine-tune a shipped ResNet-20 with BatchNorm
(trained on digits, or on Fashion-MNIST) on its inverted images after a full
restore and after a trainable-only restore, and test it on mixed-class and
single-class batches, with one or more seeds.

    python lab/finetune_experiment.py     # digits: ~5 minutes on 2 CPU cores
    python lab/finetune_experiment.py --init_checkpoint=checkpoints/resnet20_batch_fashion_mnist.weights.h5 \
        --seeds=0,1,2 --epochs=2 --steps_per_epoch=60 --output_name=finetune_experiment_fashion_mnist

The shifted task is the checkpoint's data set with inverted intensities
(dark strokes on a light background; `--invert_images`), same labels. In the
model's [-1, 1] input scale an inverted image is exactly the negated image,
so every channel's mean at the first BatchNorm flips sign: a domain shift
that lives in exactly the statistics BatchNorm keeps, while the classes stay
learnable from the pretrained features.

With several --seeds every arm is run once per seed (the seed sets the
fine-tuning data order, the recalibration batches and the order of the
mixed test batches; the starting weights are the checkpoint's), and the
table gives each cell's mean over seeds with its range (min-max).

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
flags.DEFINE_list("seeds", ["0"], "Random seeds; every arm runs once per seed.")
flags.register_validator(
    "seeds", lambda values: bool(values) and all(v.isdigit() for v in values),
    message="--seeds must be a non-empty list of integers >= 0, e.g. 0,1,2.",
)
flags.DEFINE_bool(
    "deterministic", True,
    "Deterministic ops in every arm (TrainConfig.run.deterministic): an arm repeats bit for bit.",
)
FLAGS = flags.FLAGS

_TASKS = {
    True: "{dataset} with inverted intensities (same labels)",
    False: "{dataset}, the checkpoint's own task (no shift)",
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


def _measure(model, entry, seed):
    return {
        "accuracy": evaluate_batch_dependence(
            model, entry["dataset"], batch_size=FLAGS.batch_size, image_size=entry["image_size"],
            invert=FLAGS.invert_images, seed=seed,
        ),
        "audit": [str(problem) for problem in normzoo.bn.audit(model)],
    }


def _references(entry, seed):
    """The pretrained model on the inverted test set, as restored and with
    recalibrated statistics."""
    info = normzoo.data.info(entry["dataset"], image_size=entry["image_size"])
    model = normzoo.build(entry["model"], weights=FLAGS.init_checkpoint, input_shape=info.image_shape)
    references = {"pretrained": ("pretrained, no fine-tuning", _measure(model, entry, seed))}
    train_images = normzoo.data.load(
        entry["dataset"], "train", global_batch_size=FLAGS.batch_size, training=True,
        image_size=entry["image_size"], invert=FLAGS.invert_images, seed=seed,
    )
    normzoo.bn.recalibrate(model, train_images, FLAGS.recalibration_batches)
    references["recalibrated"] = (
        "pretrained, statistics recalibrated on the fine-tuning images", _measure(model, entry, seed)
    )
    return references


def _init_checkpoint(entry, restore):
    """The checkpoint an arm starts from: the pretrained one for a full
    restore; for a trainable-only restore, that checkpoint as the restore
    leaves it (moving statistics at their initial values), written once
    into --work_dir."""
    if restore == "all":
        return FLAGS.init_checkpoint
    path = os.path.join(FLAGS.work_dir, entry["name"], "trainable_only_restore.weights.h5")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        info = normzoo.data.info(entry["dataset"], image_size=entry["image_size"])
        lost_statistics.without_statistics(
            FLAGS.init_checkpoint, path, model=entry["model"], norm=entry["norm"],
            input_shape=info.image_shape,
        )
    return path


def _finetune(entry, arm, settings, seed):
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
        model_dir=os.path.join(
            FLAGS.work_dir, entry["name"], "inverted" if FLAGS.invert_images else "no_shift",
            f"seed{seed}", arm,
        ),
        seed=seed,
        deterministic=FLAGS.deterministic,
        verbose=False,
        bn=settings["bn"],
    )
    print(f"[seed {seed}, {arm}] fine-tuning: {settings}", flush=True)
    try:
        result = train(config)
    except TrainingDiverged as error:
        return {"diverged": str(error)}, None
    measured = _measure(result.model, entry, seed)
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


_CELLS = [
    (batching, mode) for mode in ("inference", "batch_statistics") for batching in ("mixed", "single_class")
]


def aggregate(per_seed):
    """Each arm's results over seeds: `per_seed` maps a seed to {arm: (title,
    measured)} (as `_references` and `_finetune` give them). Returns {arm:
    {"title", "seeds", "diverged" (seeds where it diverged), "accuracy":
    {batching: {mode: {"mean", "min", "max", "values"}}} over the seeds that
    trained, "audit": uninitialized layers per seed}}, arms in order."""
    summary = {}
    for seed, results in per_seed.items():
        for arm, (title, measured) in results.items():
            cell = summary.setdefault(
                arm, {"title": title, "seeds": [], "diverged": [], "accuracy": {}, "audit": []}
            )
            cell["seeds"].append(seed)
            if "diverged" in measured:
                cell["diverged"].append(seed)
                continue
            cell["audit"].append(len(measured["audit"]))
            for batching, mode in _CELLS:
                cell["accuracy"].setdefault(batching, {}).setdefault(mode, {"values": []})["values"].append(
                    measured["accuracy"][batching][mode]
                )
    for cell in summary.values():
        for modes in cell["accuracy"].values():
            for stats in modes.values():
                values = np.asarray(stats["values"], float)
                stats.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()))
    return summary


def _cell(stats):
    if len(stats["values"]) == 1:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ({stats['min']:.3f}-{stats['max']:.3f})"


def table(summary):
    """Markdown table of `aggregate`'s summary: per cell the mean over seeds
    and, with several seeds, its range."""
    lines = [
        "| arm | restore + BatchNorm while fine-tuning | inference, mixed batches | inference, "
        "single-class batches | batch statistics, mixed | batch statistics, single-class | "
        "audit: layers with uninitialized statistics |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, cell in summary.items():
        if not cell["accuracy"]:
            lines.append(f"| {arm} | {cell['title']} | diverged | | | | |")
            continue
        cells = [_cell(cell["accuracy"][batching][mode]) for batching, mode in _CELLS]
        diverged = f" (diverged with seeds {cell['diverged']})" if cell["diverged"] else ""
        audits = sorted(set(cell["audit"]))
        lines.append(
            f"| {arm} | {cell['title']}{diverged} | {' | '.join(cells)} | "
            f"{'/'.join(map(str, audits))} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    entry = _manifest_entry(FLAGS.init_checkpoint)
    seeds = [int(seed) for seed in FLAGS.seeds]
    per_seed, comparison = {}, {}
    for seed in seeds:
        results = _references(entry, seed)
        models = {}
        for arm, (title, settings) in ARMS.items():
            measured, models[arm] = _finetune(entry, arm, settings, seed)
            results[arm] = (title, measured)
        per_seed[seed] = results
        if models["b"] is not None and models["c_train"] is not None:
            # Training-mode BatchNorm never reads the moving statistics, so b and
            # c_train take the same steps; only their statistics differ.
            comparison[seed] = {
                "max_abs_difference_other_variables": _max_difference(models["b"], models["c_train"], False),
                "max_abs_difference_moving_statistics": _max_difference(models["b"], models["c_train"], True),
            }
        for arm in ("b", "c_train"):
            history = results[arm][1].get("history", [])
            print(f"seed {seed}, {arm} inference accuracy by step: "
                  + ", ".join(f"{h['step']}: {h['test_accuracy']:.3f}" for h in history))
    summary = aggregate(per_seed)
    markdown = table(summary)
    print(markdown)
    print(json.dumps(comparison, indent=2))
    command = "python lab/finetune_experiment.py " + " ".join(
        f"--{name}={','.join(value) if isinstance(value, list) else os.path.relpath(value) if name == 'init_checkpoint' else value}"
        for name, value in (
            (name, FLAGS[name].value)
            for name in (
                "init_checkpoint", "invert_images", "output_name", "epochs", "steps_per_epoch",
                "batch_size", "optimizer", "learning_rate", "seeds", "deterministic",
            )
        )
    )
    task = _TASKS[FLAGS.invert_images].format(dataset=entry["dataset"])
    test_images = normzoo.data.info(entry["dataset"], image_size=entry["image_size"]).test_examples
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, f"{FLAGS.output_name}.json"), "w") as f:
        json.dump(
            {
                "command": command,
                "init_checkpoint": os.path.relpath(FLAGS.init_checkpoint),
                "task": task,
                "seeds": seeds,
                "summary": summary,
                "results": {
                    str(seed): {arm: {"title": title, **measured} for arm, (title, measured) in results.items()}
                    for seed, results in per_seed.items()
                },
                "b_vs_c_train": {str(seed): numbers for seed, numbers in comparison.items()},
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
            f,
            indent=2,
        )
    seeds_text = f", mean over seeds {seeds} (min-max)" if len(seeds) > 1 else ""
    with open(os.path.join(FLAGS.output_dir, f"{FLAGS.output_name}_table.md"), "w") as f:
        f.write(f"`{command}`\n\nTest accuracy on {task} ({test_images} test images{seeds_text}):\n\n{markdown}\n")
    return 0


if __name__ == "__main__":
    command_app.run(main)
