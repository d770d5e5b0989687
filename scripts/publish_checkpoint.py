"""Publishes a finished training run into checkpoints/: copies its final
`model.weights.h5` and records it in `checkpoints/manifest.json` with the
model, dataset, test accuracy, sha256, the exact command that trained it and
its wall time (the epochs' wall seconds summed, so a resumed run counts every
part; with the CPU of the machine publishing it: publish where it trained).

The training loop writes that file with a sha256 per tensor
(`normzoo.checkpoints.save_weights`); a file without them (from a run made
before normzoo wrote them) or whose tensors fail them is not published.
`normzoo.checkpoints.restore` checks a published file against both its
tensors' checksums and the manifest's sha256.

    python scripts/train.py --norm=layer --model_dir=runs/resnet20_layer
    python scripts/publish_checkpoint.py --model_dir=runs/resnet20_layer --name=resnet20_layer_digits
"""

import json
import os
import platform
import shutil

from absl import app, flags

from normzoo.commands import app as command_app

flags.DEFINE_string("model_dir", None, "The finished run's --model_dir.", required=True)
flags.DEFINE_string("name", None, "Name of the checkpoint in the manifest.", required=True)
flags.DEFINE_string(
    "checkpoints_dir",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints"),
    "Where the weights and manifest.json go.",
)
flags.DEFINE_string(
    "note", None, "A remark recorded with the entry, e.g. what else ran on the machine while it trained.",
)
FLAGS = flags.FLAGS


def command_line(config):
    """The scripts/train.py command that reproduces `config` (non-defaults only)."""
    from normzoo.training import TrainConfig

    defaults = TrainConfig().flat()
    parts = ["python scripts/train.py"]
    for name, value in config.items():
        if name in ("verbose", "model_dir") or value == defaults.get(name):
            continue
        if isinstance(value, bool):
            parts.append(f"--{name}" if value else f"--no{name}")
        elif value is None:
            parts.append(f"--{name}=0")  # image_size / steps_per_epoch: 0 means unset
        else:
            parts.append(f"--{name}={value}")
    return " ".join(parts)


def machine():
    """This machine's processor and core count, as the manifest records it."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def main(argv):
    del argv
    from normzoo import checkpoints
    from normzoo.checkpoints import integrity

    with open(os.path.join(FLAGS.model_dir, "flags.json")) as f:
        resolved = json.load(f)
    with open(os.path.join(FLAGS.model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    config = resolved["config"]
    if metrics["steps"] != metrics["total_steps"]:
        raise app.UsageError(
            f"{FLAGS.model_dir} stopped at step {metrics['steps']} of {metrics['total_steps']}: "
            "finish the run (re-run its command) before publishing it."
        )
    weights = os.path.join(FLAGS.model_dir, "model.weights.h5")
    source = checkpoints.read(weights)  # a tensor failing its checksum raises RestoreError
    if not source.verified:
        raise app.UsageError(
            f"{weights} carries no checksums ({source.verification}): re-run the run's "
            f"command (a finished run only evaluates and writes its weights again, with "
            f"checksums), then publish it."
        )
    os.makedirs(FLAGS.checkpoints_dir, exist_ok=True)
    file_name = f"{FLAGS.name}.weights.h5"
    destination = os.path.join(FLAGS.checkpoints_dir, file_name)
    shutil.copyfile(weights, destination)
    entry = {
        "name": FLAGS.name,
        "file": file_name,
        "sha256": integrity.file_digest(destination),
        "model": config["model"],
        "norm": config["norm"],
        "dataset": config["dataset"],
        "image_size": config["image_size"],
        # What normzoo.checkpoints.restore reports the weights expect; a run
        # older than the field fed "tf".
        "preprocess_mode": config.get("preprocess_mode") or "tf",
        "test_accuracy": metrics["test_accuracy"],
        "epochs": config["epochs"],
        "command": command_line(config),
        "wall_seconds": round(sum(epoch["wall_seconds"] for epoch in metrics["history"]), 1),
        "machine": machine(),
        **({"note": FLAGS.note} if FLAGS.note else {}),
        "tensorflow": resolved["environment"]["tensorflow"],
        "keras": resolved["environment"]["keras"],
    }
    manifest_path = os.path.join(FLAGS.checkpoints_dir, "manifest.json")
    manifest = []
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = [e for e in json.load(f) if e["name"] != FLAGS.name]
    manifest.append(entry)
    with open(manifest_path, "w") as f:
        json.dump(sorted(manifest, key=lambda e: e["name"]), f, indent=2)
        f.write("\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    command_app.run(main)
