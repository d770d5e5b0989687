"""P12: the main job on real data. One epoch of ResNet-20 on Fashion-MNIST
(60,000 training images at their native 28x28, the test split evaluated
after it), `normzoo.training.train` beside an equivalent Keras `model.fit`
(P9's `fit_run`: same model, data pipeline, optimizer, loss, steps and
evaluation), timed in alternating rounds from building the model to the
return. The row is normzoo's wall time over fit's (target <= 1.0); its
details and note give each side's training images per second (the epoch's
images over the whole run's wall time, and over normzoo's step calls).

Fashion-MNIST comes from Debian's dataset-fashion-mnist package
(`normzoo.data.fashion_mnist`), prepared on first use before timing.

    python lab/benchmark.py --figures=P12
"""

import os
import statistics

from normzoo import data
from normzoo.training import TrainConfig
from normzoo_lab.benchmarks import p9_main_job
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement

DATASET = "fashion_mnist"


def run_config(settings):
    """The `TrainConfig` P12 times: the main job's defaults on Fashion-MNIST
    at its own size, one epoch, without per-step logging (as `fit` runs
    with verbose=0)."""
    return TrainConfig.from_flat(
        model=settings.fashion_model,
        dataset=DATASET,
        image_size=None,
        batch_size=settings.fashion_batch_size,
        epochs=1,
        steps_per_epoch=settings.fashion_steps_per_epoch or None,
        verbose=False,
    )


def measure(settings, shared):
    config = run_config(settings)
    info = data.info(DATASET)  # prepares the data set (not timed)
    steps = config.optimization.steps_per_epoch or info.train_examples // config.optimization.batch_size
    images = steps * config.optimization.batch_size
    load_before = os.getloadavg()
    traces, fit_seconds = [], []
    for _ in range(settings.fashion_rounds):
        traces.append(p9_main_job.trace_run(config).summary())
        fit_seconds.append(p9_main_job.fit_run(config))
    normzoo_seconds = [t["wall_seconds"] for t in traces]
    return FigureResult([
        measurement(
            "P12",
            f"one epoch of {config.model.model} on Fashion-MNIST ({images} images, batch "
            f"{config.optimization.batch_size}): normzoo train / Keras model.fit, wall time",
            statistics.median(normzoo_seconds) / statistics.median(fit_seconds), "ratio", "<= 1.0",
            images=images,
            test_images=info.test_examples,
            normzoo_seconds=normzoo_seconds,
            fit_seconds=fit_seconds,
            normzoo_images_per_second=[images / seconds for seconds in normzoo_seconds],
            fit_images_per_second=[images / seconds for seconds in fit_seconds],
            normzoo_step_images_per_second=[images / t["step_seconds"] for t in traces],
            runs=traces,
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
        ),
    ])


def note(m):
    d = m["details"]
    return (
        f"{statistics.median(d['normzoo_seconds']):.1f} s vs {statistics.median(d['fit_seconds']):.1f} s "
        f"over {len(d['fit_seconds'])} pair(s), evaluation of {d['test_images']} test images included: "
        f"{statistics.median(d['normzoo_images_per_second']):.0f} vs "
        f"{statistics.median(d['fit_images_per_second']):.0f} training images/s over the wall time "
        f"(normzoo's steps alone: {statistics.median(d['normzoo_step_images_per_second']):.0f} images/s)"
    )


FIGURE = Figure("P12", measure, note)
