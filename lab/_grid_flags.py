"""The flags that lab/depth_sweep.py and lab/batch_size_sensitivity.py
share (which normalizations, which data, the validation split, weight decay
and seeds), and their common `main`: a learning-rate grid per cell."""

from absl import flags

FLAGS = flags.FLAGS


def define(norms):
    """Defines --norms (labels of `normzoo_lab.experiments.NORM_VARIANTS`,
    `norms` by default and the only ones allowed), --dataset, --data_dir, --image_size, --validation_fraction,
    --weight_decay and --seeds."""
    flags.DEFINE_list(
        "norms",
        list(norms),
        f"Normalizations: {', '.join(norms)} (skipinitA: alpha = A; skipinit_rsqrt: alpha = "
        "1/sqrt(d) for d residual blocks).",
    )
    flags.register_validator(
        "norms",
        lambda values: bool(values) and set(values) <= set(norms),
        message=f"--norms must be a non-empty list of {', '.join(norms)}.",
    )
    flags.DEFINE_string("dataset", "digits", "TFDS dataset; 'digits' is embedded.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory holding prepared datasets.")
    flags.DEFINE_integer("image_size", 8, "Resize images to this size (digits are 8x8).")
    flags.DEFINE_float(
        "validation_fraction",
        0.2,
        "Share of the training split held out (its last examples) to select each cell's "
        "learning rate on; the cells train on the rest, and the test split is never used "
        "to select.",
    )
    flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay.")
    flags.DEFINE_bool(
        "deterministic", True,
        "Deterministic ops in every run (TrainConfig.run.deterministic): a cell repeats bit for "
        "bit, so the spread between seeds is the seeds', not the machine's.",
    )
    define_integer_list(
        "seeds",
        ["0", "1"],
        "Seeds of the initialization and the data order: the first for the whole "
        "learning-rate grid, the others at the selected rate only (the spread over seeds).",
        minimum=0,
    )


def define_integer_list(name, default, help_text, *, minimum=1):
    """A list flag whose values must all be integers >= `minimum`."""
    flags.DEFINE_list(name, default, help_text)
    flags.register_validator(
        name,
        lambda values: bool(values) and all(value.isdigit() and int(value) >= minimum for value in values),
        message=f"--{name} must be a non-empty list of integers >= {minimum}.",
    )


def _positive_floats(values):
    try:
        return bool(values) and all(0 < float(value) < float("inf") for value in values)
    except ValueError:
        return False


def define_learning_rates(default, help_text):
    """--learning_rates: a non-empty list of positive numbers, the grid."""
    flags.DEFINE_list("learning_rates", default, help_text)
    flags.register_validator(
        "learning_rates",
        _positive_floats,
        message="--learning_rates must be a non-empty list of positive numbers, e.g. 0.05,0.1,0.2.",
    )


def learning_rates():
    """The --learning_rates grid as sorted, distinct floats."""
    return sorted({float(value) for value in FLAGS.learning_rates})


def base_config(**fields):
    """A quiet `TrainConfig` with the shared flags' values and `fields` (by
    their flag names)."""
    from normzoo.training import TrainConfig

    return TrainConfig.from_flat(
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        image_size=FLAGS.image_size,
        weight_decay=FLAGS.weight_decay,
        seed=int(FLAGS.seeds[0]),
        deterministic=FLAGS.deterministic,
        verbose=False,
        **fields,
    )


def run_and_write(argv, cells, cell_keys, flag_names, markdown, claims, **record_fields):
    """The `main` of a grid script: checks the command line, carves the
    validation split out of the training split, runs
    `normzoo_lab.experiments.run_rate_grid` on `cells()` (triples of labels, a
    `TrainConfig` and its learning rates; each config is trained on the
    rest of the training split), and writes --output's JSON (the values of
    `flag_names`, the splits, `record_fields`, the environment, the claims,
    one summary per cell and every run) and markdown (`markdown(rows,
    summaries, claims)`). `claims(summaries)` gives the verdicts. Returns
    the record and the paths written."""
    from absl import app, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

    from normzoo_lab import experiments

    try:
        train_split, validation_split = experiments.validation_splits(
            FLAGS.dataset, FLAGS.validation_fraction, data_dir=FLAGS.data_dir
        )
    except ValueError as error:
        raise app.UsageError(f"--validation_fraction: {error}") from None
    grid = [
        (labels, config.replace(train_split=train_split), rates)
        for labels, config, rates in cells()
    ]
    seeds = [int(seed) for seed in FLAGS.seeds]
    rows = experiments.run_rate_grid(grid, seeds, validation_split=validation_split)
    summaries = experiments.summarize(rows, cell_keys)
    verdicts = claims(summaries)
    record = {
        "flags": {name: FLAGS[name].value for name in flag_names},
        "train_split": train_split,
        "validation_split": validation_split,
        **record_fields,
        "environment": experiments.environment(),
        "claims": verdicts,
        "summaries": summaries,
        "results": rows,
    }
    paths = experiments.write_results(FLAGS.output, record, markdown(rows, summaries, verdicts))
    return record, paths
