"""P9: the main job's wall time, `normzoo.training.train` from call to return.

Three rows over the default run of scripts/train.py (ResNet-20 on digits
at 32x32, 10 epochs; smaller with --quick), each the median or the largest
over `main_job_rounds` runs:

- the run's wall time over the sum of its step times (target <= 1.25):
  what the loop adds around its steps (building, restoring, input,
  evaluation, checkpoints, export);
- the normzoo run over an equivalent Keras `model.fit` run (same model,
  data, optimizer, loss, epochs and steps, the test split evaluated after
  every epoch), timed in alternating rounds (target <= 1.0);
- the largest gap between the last step of an epoch and the first step of
  the next, less the evaluation between them (target <= 0.5 s), on one
  device and under MirroredStrategy over 2 logical CPU devices (in a
  subprocess, since logical devices must be set before TensorFlow starts).

The steps are timed by a clock of the figure's own: `trace_run` wraps
`TrainStep.__call__` and `EvalStep.__call__` (not the loop's bookkeeping)
while `train` runs in a fresh temporary `model_dir`, so it never resumes.
Each row's details hold every sample and the machine's load average when
the measurement began and ended (a loaded machine slows some samples).

    python lab/benchmark.py --figures=P9
"""

import dataclasses
import os
import statistics
import tempfile
import time

import keras
import tensorflow as tf

from normzoo import data, models
from normzoo_lab.benchmarks import subprocess_run
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement
from normzoo.training import EvalStep, TrainConfig, TrainStep, make_optimizer, train


@dataclasses.dataclass
class RunTrace:
    """One `train` call, timed from outside the loop.

    Attributes:
        wall_seconds: the `train` call, from its start to its return.
        steps: (start, end) of every training step call
            (`time.perf_counter()`), in order.
        evals: (start, end) of every evaluation step call.
        steps_per_epoch: steps per epoch of the run.
        history: the run's per-epoch records (metrics.json's "history":
            where each epoch's time went, as the run itself measured it).
    """

    wall_seconds: float
    steps: list
    evals: list
    steps_per_epoch: int
    history: list = dataclasses.field(default_factory=list)

    def step_seconds(self):
        return sum(end - start for start, end in self.steps)

    def evaluation_spans(self):
        """For each epoch: seconds from the first to the end of the last
        evaluation step call after its last training step (and before the
        next epoch's first)."""
        spans = []
        for last in range(self.steps_per_epoch - 1, len(self.steps), self.steps_per_epoch):
            ended = self.steps[last][1]
            resumed = self.steps[last + 1][0] if last + 1 < len(self.steps) else float("inf")
            between = [(s, e) for s, e in self.evals if ended <= s and e <= resumed]
            spans.append(between[-1][1] - between[0][0] if between else 0.0)
        return spans

    def epoch_gaps(self):
        """For each epoch but the last: seconds from its last step's end to
        the next epoch's first step's start, less its `evaluation_spans`."""
        spans = self.evaluation_spans()
        return [
            self.steps[last + 1][0] - self.steps[last][1] - spans[epoch]
            for epoch, last in enumerate(range(self.steps_per_epoch - 1, len(self.steps) - 1, self.steps_per_epoch))
        ]

    def summary(self):
        """The trace's figures, JSON-serializable, with what the run's own
        stopwatch saw in each epoch: the checkpoint write and the part of
        the evaluation outside its step calls (building, reading and
        ending the test split's iterator) fall in the gap after it."""
        evaluation = [h.get("eval_seconds") for h in self.history]
        return {
            "wall_seconds": self.wall_seconds,
            "step_seconds": self.step_seconds(),
            "first_step_seconds": self.steps[0][1] - self.steps[0][0],
            "steps": len(self.steps),
            "epoch_gaps": self.epoch_gaps(),
            "epoch_checkpoint_seconds": [h.get("checkpoint_seconds") for h in self.history],
            "epoch_eval_seconds": evaluation,
            "epoch_eval_outside_steps_seconds": [
                seconds - span for seconds, span in zip(evaluation, self.evaluation_spans())
            ],
            "epoch_input_wait_seconds": [h.get("input_wait_seconds") for h in self.history],
        }


def _recorded(calls, function):
    """`function`, recording the (start, end) of each call in `calls`; a
    call ends when its results are on the host (a step may return before
    its computation has finished)."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return tf.nest.map_structure(lambda value: value.numpy(), function(*args, **kwargs))
        finally:
            calls.append((start, time.perf_counter()))

    return wrapper


def trace_run(config, *, strategy=None):
    """Runs `train(config, strategy=strategy)` in a fresh temporary
    `model_dir` (so it never resumes) with its steps timed; returns a
    `RunTrace`."""
    steps, evals = [], []
    originals = TrainStep.__call__, EvalStep.__call__
    TrainStep.__call__ = _recorded(steps, originals[0])
    EvalStep.__call__ = _recorded(evals, originals[1])
    try:
        with tempfile.TemporaryDirectory(prefix="normzoo_p9_") as model_dir:
            start = time.perf_counter()
            result = train(config.replace(model_dir=model_dir), strategy=strategy)
            wall_seconds = time.perf_counter() - start
    finally:
        TrainStep.__call__, EvalStep.__call__ = originals
    metrics = result.metrics
    return RunTrace(wall_seconds, steps, evals, metrics["total_steps"] // config.optimization.epochs, metrics["history"])


def fit_run(config):
    """Seconds of a Keras `model.fit` run equivalent to `train(config)` on
    one device: the same model, data (`normzoo.data.load`), optimizer
    (`make_optimizer`), loss, epochs and steps, with the test split
    evaluated after every epoch (`validation_data`); no checkpoints. Timed
    from building the model to the end of `fit`, as `trace_run` times
    `train`."""
    start = time.perf_counter()
    dataset, optimization = config.data, config.optimization
    keras.utils.set_random_seed(config.run.seed)
    info = data.info(dataset.dataset, data_dir=dataset.data_dir, image_size=dataset.image_size)
    steps_per_epoch = optimization.steps_per_epoch or info.train_examples // optimization.batch_size
    model = models.build(
        config.model.model, norm=config.model.norm,
        num_classes=config.model.num_classes or info.num_classes,
        input_shape=info.image_shape,
    )
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config.distribution.jit_compile,
    )

    def load(split, training):
        return data.load(
            dataset.dataset, split, data_dir=dataset.data_dir,
            global_batch_size=optimization.batch_size, training=training,
            image_size=dataset.image_size, seed=config.run.seed,
        )

    model.fit(
        load("train", True),
        epochs=optimization.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=load(info.test_split, False),
        shuffle=False,  # the pipeline shuffles
        verbose=0,
    )
    return time.perf_counter() - start


def run_config(settings):
    """The `TrainConfig` P9 times: scripts/train.py's defaults at the
    settings' model, image size, batch, epochs and steps, without per-step
    logging (as `fit` runs with verbose=0)."""
    return TrainConfig.from_flat(
        model=settings.main_job_model,
        image_size=settings.main_job_image_size or None,
        batch_size=settings.main_job_batch_size,
        epochs=settings.main_job_epochs,
        steps_per_epoch=settings.main_job_steps_per_epoch or None,
        verbose=False,
    )


def measure(settings, shared):
    config = run_config(settings)
    load_before = os.getloadavg()
    traces, fit_seconds = [], []
    for _ in range(settings.main_job_rounds):
        traces.append(trace_run(config).summary())
        fit_seconds.append(fit_run(config))
    load_after = os.getloadavg()
    mirrored = subprocess_run.call(measure_mirrored, settings)
    common = dict(load_average_before=load_before, load_average_after=load_after)
    setting = f"{config.model.model} on {config.data.dataset}, {config.optimization.epochs} epochs"
    ratios = [t["wall_seconds"] / t["step_seconds"] for t in traces]
    normzoo_seconds = [t["wall_seconds"] for t in traces]
    over_fit = statistics.median(normzoo_seconds) / statistics.median(fit_seconds)
    return FigureResult([
        measurement(
            "P9", f"default run ({setting}): wall time / sum of step times",
            statistics.median(ratios), "ratio", "<= 1.25", ratios=ratios, runs=traces, **common,
        ),
        measurement(
            "P9", f"default run ({setting}): normzoo train / Keras model.fit, wall time",
            over_fit, "ratio", "<= 1.0", normzoo_seconds=normzoo_seconds, fit_seconds=fit_seconds, **common,
        ),
        measurement(
            "P9", f"default run ({setting}): largest gap between epochs beyond evaluation, 1 device",
            max(max(t["epoch_gaps"]) for t in traces), "s", "<= 0.5", runs=traces, **common,
        ),
        measurement(
            "P9", f"default run ({setting}): largest gap between epochs beyond evaluation, "
            "MirroredStrategy over 2 logical CPU devices",
            max(max(t["epoch_gaps"]) for t in mirrored["runs"]), "s", "<= 0.5", **mirrored,
        ),
    ])


def measure_mirrored(settings):
    """P9's runs under MirroredStrategy over 2 logical CPU devices, in a
    process where TensorFlow has created no device yet."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    load_before = os.getloadavg()
    runs = [trace_run(run_config(settings), strategy=strategy).summary() for _ in range(settings.main_job_rounds)]
    return {
        "replicas": strategy.num_replicas_in_sync,
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def note(m):
    d = m["details"]
    if "fit_seconds" in d:
        return (f"{statistics.median(d['normzoo_seconds']):.1f} s vs "
                f"{statistics.median(d['fit_seconds']):.1f} s over {len(d['fit_seconds'])} pair(s)")
    runs = d["runs"]
    if "ratios" in d:
        first = statistics.median(r["first_step_seconds"] for r in runs)
        return (f"{statistics.median(r['wall_seconds'] for r in runs):.1f} s wall, "
                f"{statistics.median(r['step_seconds'] for r in runs):.1f} s in steps "
                f"(of which {first:.1f} s the first, tracing)")
    # An epoch's checkpoint, and its evaluation's input, fall in the gap after it.
    gaps, writes, outside, later = [], [], [], []
    for r in runs:
        gaps += r["epoch_gaps"]
        writes += r["epoch_checkpoint_seconds"][:-1]
        outside += r["epoch_eval_outside_steps_seconds"][:-1]
        later += r["epoch_gaps"][1:]
    text = (f"median gap {statistics.median(gaps):.3f} s over {len(gaps)} epoch boundaries; medians in it: "
            f"checkpoint write {statistics.median(writes):.3f} s, evaluation outside its steps "
            f"{statistics.median(outside):.3f} s")
    if later:
        text += f"; largest after the first epoch {max(later):.3f} s"
    return text


FIGURE = Figure("P9", measure, note)
