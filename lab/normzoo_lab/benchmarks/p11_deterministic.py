"""P11: the cost of --deterministic (`TrainConfig.run.deterministic`).

The main job's training step (normzoo's `TrainStep` on
`settings.main_job_model`, one device, a batch of random images of the main
job's size) with TensorFlow's deterministic ops and with its default ones,
side by side in alternating rounds: two copies of the model, each step
called inside `normzoo.runtime.deterministic_ops` on or off. Target: the
step with deterministic ops at most 1.25 times the default's (the
experiment scripts use them by default).
"""

import keras
import tensorflow as tf

from normzoo import models, runtime
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement
from normzoo.training import TrainConfig, TrainStep, make_optimizer

NUM_CLASSES = 10


def _step(settings, images, labels, deterministic):
    """A training step of a fresh copy of the model that always runs with
    deterministic ops `deterministic` (also when first traced)."""
    keras.utils.set_random_seed(0)
    size = images.shape[1]
    model = models.build(settings.main_job_model, num_classes=NUM_CLASSES, input_shape=(size, size, 3))
    optimizer = make_optimizer(TrainConfig(), steps_per_epoch=100)
    optimizer.build(model.trainable_variables)
    train_step = TrainStep(model, optimizer, tf.distribute.get_strategy(), len(labels), jit_compile=False)

    def step(images, labels):
        with runtime.deterministic_ops(deterministic):
            return train_step(images, labels)

    return step


def measure(settings, shared):
    size = settings.main_job_image_size or 8
    images, labels = benchmarking.random_batch(settings.main_job_batch_size, size, NUM_CLASSES)
    steps = {
        name: (_step(settings, images, labels, deterministic), (images, labels))
        for name, deterministic in (("default", False), ("deterministic", True))
    }
    times = benchmarking.compare(
        steps, rounds=settings.determinism_rounds,
        steps_per_round=settings.determinism_steps_per_round, warmup_steps=settings.warmup_steps,
    )
    ratio, lowest, highest = benchmarking.ratio(times, "deterministic", "default")
    return FigureResult([measurement(
        "P11", f"step time, --deterministic / default ops ({settings.main_job_model}, one device)",
        ratio, "ratio", "<= 1.25",
        deterministic_step_ms=1e3 * times["deterministic"].median,
        default_step_ms=1e3 * times["default"].median,
        ratio_range_over_rounds=[lowest, highest],
        batch_size=settings.main_job_batch_size, image_size=size,
        onednn=runtime.onednn_enabled(),
    )])


def note(m):
    d = m["details"]
    return (f"{d['deterministic_step_ms']:.1f} vs {d['default_step_ms']:.1f} ms; rounds "
            f"{d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}; "
            f"oneDNN {'on' if d['onednn'] else 'off'}")


FIGURE = Figure("P11", measure, note)
