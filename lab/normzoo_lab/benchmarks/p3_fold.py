"""P3: the inference speed-up of `normzoo.bn.fold` on ResNet-50.

A ResNet-50 with the statistics of a real batch, and its folded copy, run
inference side by side in each of `settings.resnet_modes`, with the
largest difference of their outputs. Target: 1.3x faster.
"""

import numpy as np

from normzoo import bn
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement


def measure(settings, shared):
    pair = shared.resnet50()
    model = pair.inference_model()
    folded = bn.fold(model)
    outputs = model(pair.images, training=False)
    difference = np.max(np.abs(outputs - folded(pair.images, training=False)))
    scale = np.max(np.abs(outputs))
    measurements = []
    for mode in settings.resnet_modes:
        steps = {
            "unfolded": (benchmarking.inference_step(model, mode), (pair.images,)),
            "folded": (benchmarking.inference_step(folded, mode), (pair.images,)),
        }
        times = benchmarking.compare(
            steps, rounds=settings.rounds, steps_per_round=2 * settings.steps_per_round,
            warmup_steps=settings.warmup_steps,
        )
        speedup, lowest, highest = benchmarking.ratio(times, "unfolded", "folded")
        measurements.append(measurement(
            "P3", f"ResNet-50 inference speed-up of bn.fold ({mode})",
            speedup, "x", ">= 1.3",
            unfolded_ms=1e3 * times["unfolded"].median,
            folded_ms=1e3 * times["folded"].median,
            speedup_range_over_rounds=[lowest, highest],
            max_abs_output_difference=float(difference),
            max_abs_output=float(scale),
            batch_size=settings.resnet_batch_size, image_size=settings.resnet_image_size,
        ))
    return FigureResult(measurements)


def note(m):
    d = m["details"]
    # The folded model runs the same convolutions, biases and ReLUs with
    # no BatchNorm left, so its speed-up is 1 / (1 - BatchNorm's share).
    share = 1 - d["folded_ms"] / d["unfolded_ms"]
    return (f"{d['unfolded_ms']:.1f} -> {d['folded_ms']:.1f} ms: BatchNorm was {100 * share:.0f}% "
            f"of inference time (1.3x needs 23%); "
            f"max |diff| {d['max_abs_output_difference']:.1e} (max |out| {d['max_abs_output']:.1f})")


FIGURE = Figure("P3", measure, note, uses=("resnet50",))
