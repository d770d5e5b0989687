"""The oneDNN comparison: ResNet-50 training and inference with
TF_ENABLE_ONEDNN_OPTS=0 and =1, in alternating subprocesses (the variable
is read when TensorFlow starts), with the numerical difference of the two.

Not a figure with a target: it runs with `settings.compare_onednn` and
fills benchmark.json's "onednn" and its own section of BENCHMARKS.md.
"""

import os

import keras
import numpy as np
from absl import logging

from normzoo import models, runtime
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks import subprocess_run
from normzoo_lab.benchmarks.records import Figure, FigureResult


def measure(settings, shared):
    runs = {"0": [], "1": []}
    for round_index in range(settings.onednn_rounds):
        for value in ("0", "1") if round_index % 2 == 0 else ("1", "0"):
            runs[value].append(subprocess_run.call(measure_in_process, settings, {"TF_ENABLE_ONEDNN_OPTS": value}))
            logging.info("TF_ENABLE_ONEDNN_OPTS=%s: %.3f s/train step", value, runs[value][-1]["train_step_seconds"])

    def median(value, key):
        return float(np.median([run[key] for run in runs[value]]))

    off, on = np.array(runs["0"][0]["logits"]), np.array(runs["1"][0]["logits"])
    return FigureResult([], {"onednn": {
        "train_speedup": median("0", "train_step_seconds") / median("1", "train_step_seconds"),
        "inference_speedup": median("0", "inference_seconds") / median("1", "inference_seconds"),
        "train_step_seconds": {v: [r["train_step_seconds"] for r in runs[v]] for v in runs},
        "inference_seconds": {v: [r["inference_seconds"] for r in runs[v]] for v in runs},
        "onednn_enabled": {v: runs[v][0]["onednn_enabled"] for v in runs},
        "max_abs_logit_difference": float(np.max(np.abs(off - on))),
        "max_abs_logit": float(np.max(np.abs(off))),
        "first_loss": {v: runs[v][0]["first_loss"] for v in runs},
        "batch_size": settings.resnet_batch_size,
        "image_size": settings.resnet_image_size,
    }})


def measure_in_process(settings):
    """One process's ResNet-50 timings, logits and first loss."""
    size = settings.resnet_image_size
    images, labels = benchmarking.random_batch(settings.resnet_batch_size, size, 1000)
    keras.utils.set_random_seed(0)
    model = models.build("resnet50", layout="keras", norm="batch", input_shape=(size, size, 3))
    logits = model(images, training=False).numpy()
    inference = benchmarking.inference_step(model, "graph")
    step = benchmarking.train_step(model, "graph")
    first_loss = float(step(images, labels))
    times = benchmarking.compare(
        {"train": (step, (images, labels)), "inference": (inference, (images,))},
        rounds=settings.rounds, steps_per_round=settings.steps_per_round,
        warmup_steps=settings.warmup_steps,
    )
    return {
        "train_step_seconds": times["train"].median,
        "inference_seconds": times["inference"].median,
        "first_loss": first_loss,
        "logits": logits.tolist(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
        "onednn_enabled": runtime.onednn_enabled(),
        "logits_finite": bool(np.isfinite(logits).all()),
    }


def section(record):
    o = record["onednn"]
    if not o:
        return []
    return [
        f"## TF_ENABLE_ONEDNN_OPTS (ResNet-50, batch {o['batch_size']}, {o['image_size']}x{o['image_size']}, "
        "graph mode, alternating subprocesses)",
        "",
        "| | =0 | =1 | speed-up of =1 |",
        "|---|---|---|---|",
        f"| training step (s) | {', '.join(f'{s:.3f}' for s in o['train_step_seconds']['0'])} | "
        f"{', '.join(f'{s:.3f}' for s in o['train_step_seconds']['1'])} | {o['train_speedup']:.2f}x |",
        f"| inference (s) | {', '.join(f'{s:.3f}' for s in o['inference_seconds']['0'])} | "
        f"{', '.join(f'{s:.3f}' for s in o['inference_seconds']['1'])} | {o['inference_speedup']:.2f}x |",
        "",
        f"oneDNN enabled: {o['onednn_enabled']}. Logits of the same initial model: max |difference| "
        f"{o['max_abs_logit_difference']:.2e} (max |logit| {o['max_abs_logit']:.2f}); first loss "
        f"{o['first_loss']['0']:.6f} vs {o['first_loss']['1']:.6f}.",
    ]


FIGURE = Figure(
    "oneDNN", measure, section=section, tables={"onednn": None},
    selected=lambda settings: settings.compare_onednn,
)
