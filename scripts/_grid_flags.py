"""The flags that scripts/depth_sweep.py and scripts/batch_size_sensitivity.py
share: which normalizations, which data, weight decay and seed."""

from absl import flags

FLAGS = flags.FLAGS


def define(norms):
    """Defines --norms (labels of `normzoo.experiments.NORM_VARIANTS`, `norms`
    by default and the only ones allowed), --dataset, --data_dir,
    --image_size, --weight_decay and --seed."""
    flags.DEFINE_list(
        "norms", list(norms), f"Normalizations: {', '.join(norms)} (skipinitA: alpha = A)."
    )
    flags.register_validator(
        "norms",
        lambda values: bool(values) and set(values) <= set(norms),
        message=f"--norms must be a non-empty list of {', '.join(norms)}.",
    )
    flags.DEFINE_string("dataset", "digits", "TFDS dataset; 'digits' is embedded.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory holding prepared datasets.")
    flags.DEFINE_integer("image_size", 8, "Resize images to this size (digits are 8x8).")
    flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay.")
    flags.DEFINE_integer("seed", 0, "Seed of the initialization and the data order.")


def define_integer_list(name, default, help_text):
    """A list flag whose values must all be positive integers."""
    flags.DEFINE_list(name, default, help_text)
    flags.register_validator(
        name,
        lambda values: bool(values) and all(value.isdigit() and int(value) > 0 for value in values),
        message=f"--{name} must be a non-empty list of positive integers.",
    )


def base_config(**fields):
    """A quiet `TrainConfig` with the shared flags' values and `fields`."""
    from normzoo.training import TrainConfig

    return TrainConfig(
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        image_size=FLAGS.image_size,
        weight_decay=FLAGS.weight_decay,
        seed=FLAGS.seed,
        verbose=False,
        **fields,
    )


def run_and_write(argv, cells, flag_names, markdown, **record_fields):
    """The `main` of a grid script: checks the command line, trains every
    cell of `cells()`, and writes --output's JSON (the values of
    `flag_names`, `record_fields`, the environment and every cell) and
    markdown (`markdown(rows)`). Returns the rows and the paths written."""
    from absl import app, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

    from normzoo import experiments

    rows = experiments.run_grid(cells())
    record = {
        "flags": {name: FLAGS[name].value for name in flag_names},
        **record_fields,
        "environment": experiments.environment(),
        "results": rows,
    }
    return rows, experiments.write_results(FLAGS.output, record, markdown(rows))
