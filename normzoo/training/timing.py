"""Measurements of the main job's wall time (issue 15), as plain records for
the benchmark suite.

    records = timing.main_job_records(rounds=3)             # the default run
    records = timing.main_job_records(strategy=mirrored, fit=False)

`trace_run` runs `normzoo.training.train` with the training and evaluation
steps timed by a clock of its own (it wraps `TrainStep.__call__` and
`EvalStep.__call__`, not the loop's bookkeeping); `fit_run` times an
equivalent Keras `model.fit`; `main_job_records` puts them side by side:

- the run's wall time over the sum of its step times (target <= 1.25);
- the normzoo run over the `model.fit` run (target <= 1.0);
- the largest gap between the last step of an epoch and the first of the
  next, beyond the evaluation between them (target <= 0.5 s).

Each record is {"name", "value", "unit", "target", "met", "details"}; the
details hold every sample and the load average of the machine when the
measurement began and ended (a loaded machine slows some samples).
"""

import dataclasses
import os
import statistics
import tempfile
import time

import keras

from normzoo import data, models
from normzoo.training import loop
from normzoo.training.steps import EvalStep, TrainStep


@dataclasses.dataclass
class RunTrace:
    """One `train` call, timed from outside the loop.

    Attributes:
        wall_seconds: the `train` call, from its start to its return.
        steps: (start, end) of every training step call
            (`time.perf_counter()`), in order.
        evals: (start, end) of every evaluation step call.
        steps_per_epoch: steps per epoch of the run.
        metrics: what `train` returned.
    """

    wall_seconds: float
    steps: list
    evals: list
    steps_per_epoch: int
    metrics: dict

    def step_seconds(self):
        return sum(end - start for start, end in self.steps)

    def epoch_gaps(self):
        """For each epoch but the last: seconds from its last step's end to
        the next epoch's first step's start, less the evaluation between
        them (its first evaluation step's start to its last's end)."""
        gaps = []
        for last in range(self.steps_per_epoch - 1, len(self.steps) - 1, self.steps_per_epoch):
            ended, resumed = self.steps[last][1], self.steps[last + 1][0]
            between = [(s, e) for s, e in self.evals if ended <= s and e <= resumed]
            evaluation = between[-1][1] - between[0][0] if between else 0.0
            gaps.append(resumed - ended - evaluation)
        return gaps


def _recorded(calls, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            calls.append((start, time.perf_counter()))

    return wrapper


def trace_run(config, *, strategy=None):
    """Runs `loop.train(config)` in a fresh temporary `model_dir` (so it
    never resumes) with its steps timed; returns a `RunTrace`."""
    steps, evals = [], []
    originals = TrainStep.__call__, EvalStep.__call__
    TrainStep.__call__ = _recorded(steps, originals[0])
    EvalStep.__call__ = _recorded(evals, originals[1])
    try:
        with tempfile.TemporaryDirectory(prefix="normzoo_timing_") as model_dir:
            start = time.perf_counter()
            result = loop.train(dataclasses.replace(config, model_dir=model_dir), strategy=strategy)
            wall_seconds = time.perf_counter() - start
    finally:
        TrainStep.__call__, EvalStep.__call__ = originals
    steps_per_epoch = result.metrics["total_steps"] // config.epochs
    return RunTrace(wall_seconds, steps, evals, steps_per_epoch, result.metrics)


def fit_run(config):
    """Seconds of a Keras `model.fit` run equivalent to `loop.train(config)`
    on one device: the same model, data (`normzoo.data.load`), optimizer
    (`loop.make_optimizer`), loss, epochs and steps, with the test split
    evaluated after every epoch (`validation_data`); no checkpoints. Timed
    from building the model to the end of `fit`."""
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    info = data.info(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
    steps_per_epoch = config.steps_per_epoch or info.train_examples // config.batch_size
    model = models.build(
        config.model, norm=config.norm, num_classes=config.num_classes or info.num_classes,
        input_shape=info.image_shape,
    )
    model.compile(
        optimizer=loop.make_optimizer(config, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )

    def load(split, training):
        return data.load(
            config.dataset, split, data_dir=config.data_dir, global_batch_size=config.batch_size,
            training=training, image_size=config.image_size, seed=config.seed,
        )

    model.fit(
        load("train", True),
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=load(info.test_split, False),
        shuffle=False,  # the pipeline shuffles
        verbose=1 if config.verbose else 0,
    )
    return time.perf_counter() - start


def _record(name, value, unit, target, met, **details):
    return {"name": name, "value": value, "unit": unit, "target": target, "met": met, "details": details}


def main_job_records(config=None, *, rounds=1, strategy=None, fit=True):
    """The main job's wall-time figures.

    Args:
        config: A `loop.TrainConfig`; None: scripts/train.py's defaults
            (ResNet-20 on digits at 32x32, 10 epochs).
        rounds: normzoo runs (and as many `model.fit` runs, alternating
            with them) to take medians over.
        strategy: A `tf.distribute.Strategy` for the normzoo runs (e.g.
            MirroredStrategy over 2 logical devices, which must be set up
            before TensorFlow starts); `fit` must then be False.
        fit: Also time `fit_run` and record normzoo / fit.

    Returns:
        A list of records (see the module docstring).
    """
    if strategy is not None and fit:
        raise ValueError("fit_run runs on one device: pass fit=False with a strategy.")
    config = config or loop.TrainConfig()
    load_before = os.getloadavg()
    traces, fit_seconds = [], []
    for _ in range(rounds):
        traces.append(trace_run(config, strategy=strategy))
        if fit:
            fit_seconds.append(fit_run(config))
    load_after = os.getloadavg()
    replicas = strategy.num_replicas_in_sync if strategy else 1
    setting = f"{config.model} on {config.dataset}, {config.epochs} epochs, {replicas} replica(s)"
    common = dict(load_average_before=load_before, load_average_after=load_after, rounds=rounds)
    ratios = [trace.wall_seconds / trace.step_seconds() for trace in traces]
    ratio = statistics.median(ratios)
    records = [_record(
        f"{setting}: wall time / sum of step times", ratio, "ratio", "<= 1.25", ratio <= 1.25,
        wall_seconds=[t.wall_seconds for t in traces], step_seconds=[t.step_seconds() for t in traces],
        first_step_seconds=[t.steps[0][1] - t.steps[0][0] for t in traces], ratios=ratios, **common,
    )]
    if fit:
        normzoo = statistics.median(t.wall_seconds for t in traces)
        over_fit = normzoo / statistics.median(fit_seconds)
        records.append(_record(
            f"{setting}: normzoo run / model.fit run (wall time)", over_fit, "ratio", "<= 1.0",
            over_fit <= 1.0, normzoo_seconds=[t.wall_seconds for t in traces],
            fit_seconds=fit_seconds, **common,
        ))
    gaps = [trace.epoch_gaps() for trace in traces]
    largest = max(max(g) for g in gaps)
    records.append(_record(
        f"{setting}: largest gap between epochs beyond evaluation", largest, "s", "<= 0.5",
        largest <= 0.5, gaps=gaps, **common,
    ))
    return records
