"""The training loop behind scripts/train.py (and scripts/finetune.py).

`train(config)` (a `TrainConfig`: see `normzoo.training.config`) builds
the model and data under the chosen strategy, trains with a custom loop
(Keras `fit` cannot XLA-compile under MirroredStrategy nor run
MultiWorkerMirroredStrategy in TF 2.21), and keeps in `model_dir`:

    checkpoints/            tf.train.CheckpointManager: model (BatchNorm
                            statistics included), optimizer, step
    tensorboard/            scalars per epoch: those of metrics.json's
                            history
    flags.json              the resolved configuration (its flat fields:
                            `TrainConfig.flat()`) and environment
    metrics.json            per-epoch history (losses, accuracies, learning
                            rate, and where the epoch's time went: see
                            `normzoo.training.stopwatch`) and the final
                            figures (`time_this_run`: the same for this
                            process's whole run); for a run started from
                            `init_checkpoint`, the restored model's test
                            figures before any step (`initial_test_accuracy`,
                            `initial_test_loss`); for a run whose loss
                            diverged, `stopped` (reason, step, message)
                            beside the history so far
    restore_report.json     for a run started from `init_checkpoint`: what
                            was restored, skipped (a new classifier) and
                            ignored, and the BatchNorm audit after it
    model.weights.h5        the final weights (Keras format, with a sha256
                            per tensor: `normzoo.checkpoints.save_weights`),
                            for normzoo's restore and `model.load_weights`

A run may start from a pretrained checkpoint (`init_checkpoint`, any format
of `normzoo.checkpoints.restore`): every variable is restored, BatchNorm
moving statistics included, and a new classifier is made when the number of
classes differs; `bn` says whether BatchNorm keeps training its statistics
while fine-tuning (see `normzoo.training.finetune`).

Running the same configuration again resumes from the last checkpoint in
`model_dir` (never from `init_checkpoint` again), with the batch it would
have seen next; a finished run is not retrained. A non-finite loss stops the
run before the next checkpoint is written, so the last checkpoint stays a
good one. The run's last log line says where its time went.

How `train` runs, phase by phase (each a function below, the run's state in
one `_Run`): `_plan` checks the configuration against the data and the
model directory and resolves the inputs it leaves unset (the run then uses
that resolved configuration); `_build_model`; then `_run`: `_restore_or_initialize` (the
optimizer, and the last checkpoint or `init_checkpoint`), `_record_start`
(flags.json, the opening log), for each epoch left `_train_epoch` and
`_evaluate_and_record` (metrics.json, TensorBoard, checkpoint), `_export`
(final weights and metrics). One input iterator serves every epoch.
"""

import contextlib
import dataclasses
import json
import math
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from normzoo import backends
from normzoo import bn, checkpoints, data, models, runtime
from normzoo.training import distribute, finetune
from normzoo.training.config import INPUT_FIELDS, ConfigError, TrainConfig
from normzoo.training.steps import EvalStep, TrainStep, evaluate
from normzoo.training.stopwatch import CHECKPOINT, EVAL, FIRST_STEP, INPUT_WAIT, STEP, Stopwatch


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the trained model (still under its strategy),
    the final metrics written to `model_dir/metrics.json`, and, for a run
    that started from `init_checkpoint` in this call, the
    `normzoo.training.finetune.Initialization` (None when resumed)."""

    model: keras.Model
    metrics: dict
    initialization: finetune.Initialization | None = None


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint was kept."""


def _learning_rate(optimization, steps_per_epoch):
    total = optimization.epochs * steps_per_epoch
    warmup = int(optimization.warmup_epochs * steps_per_epoch)
    if optimization.schedule == "constant":
        return optimization.learning_rate
    if optimization.schedule == "step":
        boundaries = [int(total * 0.5), int(total * 0.75)]
        values = [optimization.learning_rate * f for f in (1.0, 0.1, 0.01)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0, max(total - warmup, 1), warmup_target=optimization.learning_rate, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(optimization.learning_rate, max(total, 1))


def make_optimizer(config, steps_per_epoch):
    """The optimizer of the `TrainConfig` `config` (its `optimization`, and
    loss scaling for `distribution.mixed_precision="float16"`), with
    decoupled weight decay that spares biases, normalization parameters and
    SkipInit scalars."""
    optimization = config.optimization
    learning_rate = _learning_rate(optimization, steps_per_epoch)
    decay = optimization.weight_decay or None
    if optimization.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, weight_decay=decay)
    elif optimization.optimizer == "momentum":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=decay)
    elif optimization.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=decay)
    else:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=optimization.weight_decay)
    if decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "alpha"])
    if config.distribution.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _environment(strategy, train_step, steps_per_epoch):
    return {
        "num_replicas": strategy.num_replicas_in_sync,
        "devices": distribute.replica_devices(strategy),
        "xla_form": train_step.form,
        "steps_per_epoch": steps_per_epoch,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "onednn": runtime.onednn_enabled(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def _write_json(path, value):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


# metrics.json's figures of the restored model, before fine-tuning.
_BASELINE_KEYS = ("initial_test_accuracy", "initial_test_loss")


def _read_metrics(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


# Fields (flat names) that change the variables a checkpoint holds, or
# where they started: a run resumes only with the same values.
_MODEL_FIELDS = (
    "model",
    "norm",
    "dataset",
    "invert_images",
    "image_size",
    "optimizer",
    "mixed_precision",
    "num_classes",
    "bn",
    "init_checkpoint",
    "preprocess_mode",
    "channels",
    "layout",
)
# What a run whose flags.json is older than an input field fed.
_UNRECORDED = {"preprocess_mode": "tf", "channels": None, "layout": None}


def _saved_config(model_dir):
    """The flat fields that model_dir/flags.json records (those of the
    normzoo version that wrote it: older ones lack newer fields, and may
    hold fields that no longer exist)."""
    with open(os.path.join(model_dir, "flags.json")) as f:
        return json.load(f)["config"]


def _inputs_found(config, init_source, resumed):
    """{input field (`INPUT_FIELDS`): value} that the init checkpoint says
    (a run that starts from it), or that model_dir/flags.json recorded (a
    run that resumes); {} for a new run without init checkpoint."""
    if init_source is not None:
        return finetune.checkpoint_inputs(init_source, config.model.model)
    if resumed and os.path.exists(os.path.join(config.run.model_dir, "flags.json")):
        saved = _saved_config(config.run.model_dir)
        return {field: saved.get(field, _UNRECORDED[field]) for field in INPUT_FIELDS}
    return {}


def _check_same_model(config):
    """Raises ConfigError if model_dir/flags.json records other values of
    `_MODEL_FIELDS` than `config` (resolved) has."""
    if not os.path.exists(os.path.join(config.run.model_dir, "flags.json")):
        return
    saved = _saved_config(config.run.model_dir)
    now = config.flat()
    defaults = TrainConfig().flat()
    # A field absent from an older flags.json had its default value.
    changed = [f for f in _MODEL_FIELDS if saved.get(f, _UNRECORDED.get(f, defaults[f])) != now[f]]
    if changed:
        details = ", ".join(f"{f}={saved.get(f)!r} there, {now[f]!r} now" for f in changed)
        raise ConfigError(
            f"{config.run.model_dir} holds checkpoints of another configuration ({details}); "
            "resume with the same flags or choose a new --model_dir."
        )


def _log(config, message):
    logging.info(message)
    if config.run.verbose:
        print(message, flush=True)


def _load(config, split, training, input_context=None, **stream):
    """`config`'s dataset split in global batches of its batch size
    (this pipeline's share of them with `input_context`); `stream`: the
    `steps_per_epoch`, `epochs` and `start_step` of a training stream."""
    return data.load(
        config.data.dataset,
        split,
        data_dir=config.data.data_dir,
        global_batch_size=config.optimization.batch_size,
        input_context=input_context,
        training=training,
        image_size=config.data.image_size,
        channels=config.data.channels,
        preprocess_mode=config.data.preprocess_mode,
        invert=config.data.invert_images,
        seed=config.run.seed,
        **stream,
    )


def _training_batches(strategy, config, **stream):
    """The distributed training stream of `config.data.train_split` (`stream`:
    see `_load`), sharded as `config.distribution.input_sharding` says."""
    split, batch_size = config.data.train_split, config.optimization.batch_size

    def dataset_fn(input_context):
        if config.distribution.input_sharding == "pipeline":
            return _load(config, split, True, input_context, **stream)
        # Every pipeline builds the same global batches and keeps its own
        # contiguous slice of each, split into per-replica batches.
        pipelines = input_context.num_input_pipelines
        per_pipeline = batch_size // pipelines
        start = input_context.input_pipeline_id * per_pipeline
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        dataset = _load(config, split, True, **stream).map(
            lambda images, labels: (
                images[start : start + per_pipeline],
                labels[start : start + per_pipeline],
            )
        )
        dataset = dataset.unbatch().batch(per_replica, drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _evaluation_batches(strategy, config, split):
    """`(batches, steps)`: one iterator over `split` for the whole
    run, repeated in passes (`data.load(..., repeat=True)`), and the steps
    of one pass. Each evaluation takes `steps` batches: the test split
    once, and no iterator built or released between epochs (building
    one under MirroredStrategy took 0.6 s of every epoch's gap)."""
    steps = []

    def dataset_fn(input_context):
        steps.append(data.evaluation_steps(
            config.data.dataset, split, global_batch_size=config.optimization.batch_size,
            input_context=input_context, data_dir=config.data.data_dir,
        ))
        return _load(config, split, False, input_context, repeat=True)

    batches = iter(strategy.distribute_datasets_from_function(dataset_fn))
    return batches, steps[0]


def _recalibrate(config, model):
    """Re-estimates the BatchNorm statistics of `model` on the first training
    batches (bn="recalibrated"). Every worker reads the same global batches,
    so every copy of the model gets the same statistics."""
    batches = _load(config, config.data.train_split, True).take(finetune.RECALIBRATION_BATCHES)
    examples = bn.recalibrate(model, batches)
    _log(config, f"bn=recalibrated: BatchNorm statistics re-estimated from {examples} training examples.")


@contextlib.contextmanager
def _precision_policy(mixed_precision):
    """Keras' global dtype policy for the run, set back afterwards."""
    previous = keras.mixed_precision.global_policy().name
    if mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{mixed_precision}")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def train(config, *, strategy=None):
    """Trains (or resumes training) as `config` says; returns a `TrainResult`
    (the model and the final metrics, also written to `model_dir/metrics.json`).

    Args:
        config: A `TrainConfig`.
        strategy: A `tf.distribute.Strategy` to use instead of the one
            `config.distribution.strategy` names (tests pass one with logical devices).

    Raises:
        ConfigError: an invalid configuration, or an `init_checkpoint` that is
            missing or does not fit the model (the message says which
            variables), before anything is trained or written.
        TrainingDiverged: the loss became non-finite.
    """
    backends.require_tensorflow("normzoo.training.train (the tf.distribute training loop)")
    config.validate()
    strategy = strategy or distribute.make_strategy(config.distribution.strategy, config.distribution.tpu)
    # The run uses `resolved`: `config` with the inputs it left unset taken
    # from its init checkpoint or from the run it resumes.
    resolved, plan = _plan(config, strategy)
    precision = _precision_policy(resolved.distribution.mixed_precision)
    with precision, runtime.deterministic_ops(resolved.run.deterministic):
        keras.utils.set_random_seed(resolved.run.seed)
        model = _build_model(resolved, strategy, plan)
        return _run(resolved, strategy, model, plan)


def _run(config, strategy, model, plan):
    """The phases of a run of the resolved `config` on its freshly built
    model: restore or initialize, the epochs left (each trained, then
    evaluated and recorded), export."""
    run = _restore_or_initialize(config, strategy, model, plan)
    _record_start(run)
    epochs = config.optimization.epochs
    if run.step < epochs * plan.steps_per_epoch:
        # One iterator for every epoch left: the input keeps flowing from one
        # epoch into the next, and starts at the batch of the resumed step.
        batches = iter(_training_batches(
            strategy, config, steps_per_epoch=plan.steps_per_epoch, epochs=epochs, start_step=run.step,
        ))
        try:
            for epoch in range(run.step // plan.steps_per_epoch, epochs):
                started = run.stopwatch.mark()
                sums = _train_epoch(run, batches, epoch)
                _evaluate_and_record(run, epoch, sums, started)
        except TrainingDiverged as error:
            # Also before the first checkpoint: the history so far (and a
            # fine-tuning run's baseline) and why the run stopped.
            _write_metrics(run, stopped={"reason": "diverged", "step": run.step, "message": str(error)})
            raise
    return _export(run)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a run will do, settled (and checked) before anything is built.

    `train_examples` is the size of `config.data.train_split`; `resume_from`
    the checkpoint in `model_dir` to resume from (None: a new run);
    `init_source` what `finetune.read_init_checkpoint` found in
    `init_checkpoint` for a new run started from it; `started` when `train`
    began (`time.perf_counter()`)."""

    info: data.DataInfo
    train_examples: int
    steps_per_epoch: int
    num_classes: int
    chief: bool
    out_dir: str
    resume_from: str | None
    init_source: object
    started: float


def _plan(config, strategy):
    """`(resolved, plan)`: the configuration the run uses (`config` with the
    inputs it leaves unset resolved: `TrainConfig.with_inputs`) and what
    the run will do, checked before anything is built."""
    started = time.perf_counter()
    model_dir, batch_size = config.run.model_dir, config.optimization.batch_size
    _check_model_dir(model_dir)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(
            f"batch_size={batch_size} does not divide over {replicas} replicas; "
            f"use a multiple of {replicas}."
        )
    # Every worker resumes from the chief's checkpoints.
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    # A resumed run continues from its own checkpoint, never from the init one.
    init_source = None
    if config.finetune.init_checkpoint and not latest:
        try:
            init_source = finetune.read_init_checkpoint(
                config.finetune.init_checkpoint, config.model.norm, config.model.model
            )
        except finetune.InitCheckpointError as error:
            raise ConfigError(str(error)) from None
    resolved = config.with_inputs(**_inputs_found(config, init_source, resumed=bool(latest)))
    if latest:
        _check_same_model(resolved)
    dataset = resolved.data
    try:
        info = data.info(
            dataset.dataset, data_dir=dataset.data_dir, image_size=dataset.image_size,
            channels=dataset.channels,
        )
    except ValueError as error:  # an unknown dataset, or not one of images and labels
        raise ConfigError(str(error)) from None
    try:
        train_examples = data.num_examples(dataset.dataset, dataset.train_split, data_dir=dataset.data_dir)
    except ValueError as error:
        raise ConfigError(f"train_split={dataset.train_split!r}: {error}") from None
    steps_per_epoch = config.optimization.steps_per_epoch or train_examples // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size={batch_size} exceeds the {train_examples} training examples "
            f"of {dataset.train_split!r}."
        )
    num_classes = config.model.num_classes or info.num_classes
    if num_classes < info.num_classes:
        raise ConfigError(
            f"num_classes={num_classes} is smaller than the {info.num_classes} classes of "
            f"{dataset.dataset}, whose labels go up to {info.num_classes - 1}; pass "
            f"num_classes >= {info.num_classes} or leave it unset."
        )
    return resolved, _Plan(
        info=info,
        train_examples=train_examples,
        steps_per_epoch=steps_per_epoch,
        num_classes=num_classes,
        chief=distribute.is_chief(strategy),
        out_dir=distribute.worker_dir(model_dir, strategy),
        resume_from=latest,
        init_source=init_source,
        started=started,
    )


def _check_model_dir(model_dir):
    """Raises ConfigError unless `model_dir` is a directory or can be made
    one (no file in its place or above it); checks only, writes nothing."""
    path = os.path.abspath(model_dir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if os.path.isdir(existing):
        return
    where = "is a file" if existing == path else f"lies under {existing!r}, which is a file"
    raise ConfigError(
        f"model_dir={model_dir!r} (--model_dir) {where}, and the run needs a directory there "
        f"(made if missing) for its checkpoints, logs and metrics; the file is left as it is. "
        f"Choose another --model_dir."
    )


def _build_model(config, strategy, plan):
    overrides = {}
    if config.model.norm == "batch" and config.distribution.sync_bn:
        overrides["synchronized_bn"] = True
    if config.model.skipinit_alpha is not None:
        overrides["skipinit_alpha"] = config.model.skipinit_alpha
    if config.model.layout is not None:
        overrides["layout"] = config.model.layout
    with strategy.scope():
        return models.build(
            config.model.model,
            norm=config.model.norm,
            num_classes=plan.num_classes,
            input_shape=plan.info.image_shape,
            **overrides,
        )


@dataclasses.dataclass
class _Run:
    """A run in progress: what it trains with, where it writes, how far it
    got (`step`, `history`) and where its time went (`stopwatch`)."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    plan: _Plan
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    manager: tf.train.CheckpointManager
    train_step: TrainStep
    eval_step: EvalStep
    eval_batches: object  # an iterator over the test split, repeated (see _evaluation_batches)
    eval_steps: int  # the steps of one pass of eval_batches: one evaluation
    finite_check: "_FiniteCheck"  # of the model's and the optimizer's variables, before a checkpoint
    writer: object  # TensorBoard's summary writer
    initialization: finetune.Initialization | None
    baseline: dict  # metrics.json's figures of the restored model, before fine-tuning
    history: list
    step: int
    last_saved: int
    stopwatch: Stopwatch
    epochs_started: float = 0.0  # time.time() when this process's first epoch began

    @property
    def metrics_path(self):
        return os.path.join(self.plan.out_dir, "metrics.json")

    def log(self, message):
        _log(self.config, message)


def _restore_or_initialize(config, strategy, model, plan):
    """Makes the optimizer and restores the run's last checkpoint, or for a
    new run from `init_checkpoint` restores that into the model; returns
    the `_Run`."""
    eval_step = EvalStep(model, strategy)
    eval_batches, eval_steps = _evaluation_batches(strategy, config, plan.info.test_split)
    initialization = None
    with strategy.scope():
        if plan.init_source is not None:
            initialization = _initialize(config, model, plan, eval_step, eval_batches, eval_steps)
        if config.finetune.bn == "recalibrated" and not plan.resume_from:  # a resume restores them
            _recalibrate(config, model)
        # Before the optimizer sees the trainable variables (bn="frozen"
        # makes gamma and beta non-trainable).
        finetune.set_bn_mode(model, config.finetune.bn)
        optimizer = make_optimizer(config, plan.steps_per_epoch)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    os.makedirs(plan.out_dir, exist_ok=True)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(plan.out_dir, "checkpoints"), max_to_keep=config.run.max_checkpoints
    )
    if plan.resume_from:
        # Every variable, BatchNorm statistics and optimizer slots included.
        checkpoint.restore(plan.resume_from).assert_consumed()
        if config.optimization.schedule == "constant":
            # A constant learning rate is an optimizer variable, restored with
            # the rest; the flag given now wins.
            optimizer.learning_rate = config.optimization.learning_rate
    step = int(optimizer.iterations.numpy())
    previous = _read_metrics(os.path.join(plan.out_dir, "metrics.json"))
    # A resumed run keeps the figures of its start from init_checkpoint.
    if initialization is not None:
        baseline = {
            "initial_test_accuracy": initialization.test["accuracy"],
            "initial_test_loss": initialization.test["loss"],
        }
    else:
        baseline = {key: previous[key] for key in _BASELINE_KEYS if key in previous}
    return _Run(
        config=config,
        strategy=strategy,
        plan=plan,
        model=model,
        optimizer=optimizer,
        manager=manager,
        train_step=TrainStep(
            model, optimizer, strategy, config.optimization.batch_size, config.distribution.jit_compile
        ),
        eval_step=eval_step,
        eval_batches=eval_batches,
        eval_steps=eval_steps,
        finite_check=_FiniteCheck([*model.variables, *optimizer.variables]),
        writer=tf.summary.create_file_writer(os.path.join(plan.out_dir, "tensorboard")),
        initialization=initialization,
        baseline=baseline,
        history=[h for h in previous.get("history", []) if h["epoch"] < step // plan.steps_per_epoch],
        step=step,
        last_saved=step,
        stopwatch=Stopwatch(start=plan.started),
    )


def _initialize(config, model, plan, eval_step, eval_batches, eval_steps):
    """Restores `init_checkpoint` into `model` and measures the restored
    model on the test split: the baseline that fine-tuning is to improve on."""
    try:
        initialization = finetune.initialize(model, config.finetune.init_checkpoint, plan.init_source)
    except checkpoints.RestoreError as error:
        raise ConfigError(
            f"init_checkpoint={config.finetune.init_checkpoint!r} does not fit "
            f"model={config.model.model!r} norm={config.model.norm!r}: {error}"
        ) from None
    return dataclasses.replace(initialization, test=evaluate(eval_step, eval_batches, eval_steps))


def _record_start(run):
    """flags.json (also TensorBoard's text "flags" at the run's first
    step), and the log lines that open a run."""
    config, plan = run.config, run.plan
    info = plan.info
    environment = _environment(run.strategy, run.train_step, plan.steps_per_epoch)
    flags_record = {"config": config.flat(), "environment": environment}
    if plan.chief:
        _write_json(os.path.join(plan.out_dir, "flags.json"), flags_record)
    # Also the first write of the run's summaries, which costs 0.15-0.2 s
    # (TensorBoard's summary code loads): here, not in the first epoch's gap.
    with run.writer.as_default(step=run.step):
        tf.summary.text("flags", f"```\n{json.dumps(flags_record, indent=2, default=str)}\n```")
    run.writer.flush()
    optimization = config.optimization
    run.log(
        f"normzoo: {config.model.model} norm={config.model.norm} on {config.data.dataset} "
        f"({plan.train_examples} {config.data.train_split} / {info.test_examples} test, "
        f"image {info.image_shape}); "
        f"{run.model.count_params():,} parameters; {environment['num_replicas']} replica(s); "
        f"global batch {optimization.batch_size}; {plan.steps_per_epoch} steps/epoch x "
        f"{optimization.epochs} epochs",
    )
    if plan.resume_from:
        run.log(f"Resumed from {plan.resume_from} at step {run.step}.")
    if run.initialization is not None:
        _log_initialization(config, run.initialization, plan.chief, plan.out_dir)
    run.epochs_started = time.time()


def _train_epoch(run, batches, epoch):
    """Trains `epoch` from the run's step to its end; returns the sums of
    (loss, correct predictions, examples) over its steps."""
    config, plan = run.config, run.plan
    steps_per_epoch, checkpoint_steps = plan.steps_per_epoch, config.run.checkpoint_steps
    progress = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "accuracy"])
    if config.run.verbose and plan.chief:
        print(f"Epoch {epoch + 1}/{config.optimization.epochs}", flush=True)
    sums = np.zeros(3)
    for _ in range(run.step - epoch * steps_per_epoch, steps_per_epoch):
        with run.stopwatch.timing(INPUT_WAIT):
            images, labels = next(batches)
        # The first step of a process traces (and compiles) it: timed apart.
        part = STEP if run.stopwatch.calls[FIRST_STEP] else FIRST_STEP
        with run.stopwatch.timing(part):
            result = np.array([float(v) for v in run.train_step(images, labels)])
        if part == FIRST_STEP:
            run.log(f"Training step: {run.train_step.describe()}.")
        run.step += 1
        if not math.isfinite(result[0]):
            raise TrainingDiverged(
                f"The training loss became {result[0] / result[2]} at step {run.step}; stopped "
                f"before writing a checkpoint. The last good checkpoint is kept: "
                f"{run.manager.latest_checkpoint or 'none was written yet'}. Lower "
                f"--learning_rate or add warm-up (--warmup_epochs)."
            )
        sums += result
        if config.run.verbose and plan.chief:
            progress.update(
                run.step - epoch * steps_per_epoch,
                [("loss", sums[0] / sums[2]), ("accuracy", sums[1] / sums[2])],
            )
        # An epoch's last step is checkpointed after its metrics are written.
        if checkpoint_steps and run.step % checkpoint_steps == 0 and run.step % steps_per_epoch:
            _save_checkpoint(run)
    return sums


def _evaluate_and_record(run, epoch, sums, started):
    """Evaluates after `epoch`, writes its record (metrics.json, TensorBoard)
    and its checkpoint, and logs it; `started`: the stopwatch's mark when
    the epoch began."""
    config = run.config
    with run.stopwatch.timing(EVAL):
        test = evaluate(run.eval_step, run.eval_batches, run.eval_steps)
    record = {
        "epoch": epoch,
        "step": run.step,
        "train_loss": sums[0] / max(sums[2], 1),
        "train_accuracy": sums[1] / max(sums[2], 1),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "learning_rate": float(keras.ops.convert_to_numpy(run.optimizer.learning_rate)),
    }
    run.history.append(record)
    # Before the checkpoint: a run killed in between redoes this epoch's
    # last steps and replaces its record (see `history` in _restore_or_initialize).
    _write_metrics(run)
    if run.last_saved != run.step:
        _save_checkpoint(run)
    # The epoch's times include its checkpoint, so they complete its record
    # once that is written.
    record.update(run.stopwatch.figures(config.optimization.batch_size, since=started))
    _write_metrics(run)
    with run.writer.as_default(step=run.step):
        for key, value in record.items():
            if key not in ("epoch", "step") and value is not None:
                tf.summary.scalar(key, value)
    run.writer.flush()
    run.log(
        f"epoch {epoch + 1}/{config.optimization.epochs}: train loss {record['train_loss']:.4f} "
        f"accuracy {record['train_accuracy']:.4f}; test loss {test['loss']:.4f} "
        f"accuracy {test['accuracy']:.4f}",
    )


def _write_metrics(run, **extra):
    """metrics.json of a run in progress; `extra`: more entries, e.g. why
    it stopped."""
    _write_json(
        run.metrics_path,
        {
            "steps": run.step,
            "total_steps": run.config.optimization.epochs * run.plan.steps_per_epoch,
            **run.baseline,
            "history": run.history,
            **extra,
        },
    )


def _export(run):
    """Writes the final weights and metrics, and logs where the time went;
    returns the `TrainResult`."""
    config = run.config
    if not run.history:  # nothing left to train: report the restored model
        with run.stopwatch.timing(EVAL):
            test = evaluate(run.eval_step, run.eval_batches, run.eval_steps)
        run.history.append({"epoch": config.optimization.epochs - 1, "step": run.step,
                            "test_loss": test["loss"], "test_accuracy": test["accuracy"]})
    weights_path = os.path.join(run.plan.out_dir, "model.weights.h5")
    checkpoints.save_weights(run.model, weights_path)
    final = {
        "model": config.model.model,
        "norm": config.model.norm,
        "dataset": config.data.dataset,
        "steps": run.step,
        "total_steps": config.optimization.epochs * run.plan.steps_per_epoch,
        "test_accuracy": run.history[-1]["test_accuracy"],
        "test_loss": run.history[-1]["test_loss"],
        **run.baseline,
        "train_seconds_this_run": time.time() - run.epochs_started,
        "time_this_run": run.stopwatch.figures(config.optimization.batch_size),
        "xla": run.train_step.describe(),
        "history": run.history,
    }
    _write_json(run.metrics_path, final)
    run.log(f"Final test accuracy {final['test_accuracy']:.4f}; wrote {weights_path}.")
    run.log(run.stopwatch.summary(final["time_this_run"]))
    return TrainResult(model=run.model, metrics=final, initialization=run.initialization)


def _save_checkpoint(run):
    """Saves a checkpoint unless a variable is NaN or infinite.

    An update can make variables non-finite while the loss of its own step
    was still finite (an overflowing gradient); the loss only shows it one
    step later, after the checkpoint would have been written.
    """
    with run.stopwatch.timing(CHECKPOINT):
        non_finite = run.finite_check.non_finite()
        if non_finite:
            raise TrainingDiverged(
                f"{len(non_finite)} variable(s) became NaN or infinite at step {run.step} "
                f"({', '.join(non_finite[:5])}); stopped before writing a checkpoint. The last good "
                f"checkpoint is kept: {run.manager.latest_checkpoint or 'none was written yet'}. Lower "
                f"--learning_rate or add warm-up (--warmup_epochs)."
            )
        run.manager.save(checkpoint_number=run.step)
    run.last_saved = run.step


class _FiniteCheck:
    """Which of `variables` hold a NaN or an infinity, in one compiled
    function: read one by one, each with its own host round trip,
    ResNet-20's 157 variables took 0.05 s (one device) to 0.3 s
    (MirroredStrategy) of every checkpoint write. Traced once when made,
    not in an epoch's gap."""

    def __init__(self, variables):
        self._variables = [v for v in variables if tf.as_dtype(v.dtype).is_floating]

        def finite():
            return tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in self._variables])

        self._finite = runtime.own_function(finite)
        self.non_finite()

    def non_finite(self):
        """The paths of the variables that are not finite, in order."""
        flags = self._finite().numpy()
        return [variable.path for variable, finite in zip(self._variables, flags) if not finite]


def _log_initialization(config, initialization, chief, out_dir):
    report = initialization.report
    head = (
        f"new classifier ({', '.join(initialization.new_head)})"
        if initialization.new_head
        else "classifier restored"
    )
    _log(
        config,
        f"Initialized from {config.finetune.init_checkpoint} (bn={config.finetune.bn}); {head}.\n{report}",
    )
    _log(
        config,
        f"Restored model, before fine-tuning: test loss {initialization.test['loss']:.4f} "
        f"accuracy {initialization.test['accuracy']:.4f}",
    )
    if initialization.audit:
        logging.warning(
            "normzoo.bn.audit after the restore: %s",
            "; ".join(str(problem) for problem in initialization.audit),
        )
        if config.run.verbose:
            print(
                f"WARNING: {len(initialization.audit)} BatchNorm layer(s) have uninitialized or "
                f"invalid statistics after the restore (normzoo.bn.audit).",
                flush=True,
            )
    if chief:
        _write_json(os.path.join(out_dir, "restore_report.json"), initialization.to_json())
