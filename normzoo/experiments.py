"""Grids of training runs and their result tables, for the experiment scripts.

    base = TrainConfig(model="wrn_16_2", epochs=3, verbose=False)
    cells = [({"norm": v}, with_norm(base, v)) for v in ("batch", "skipinit0", "none")]
    rows = normzoo.experiments.run_grid(cells)
    normzoo.experiments.write_results("results/depth_sweep", record, markdown)

`with_norm` sets a configuration's normalization by label (`NORM_VARIANTS`:
SkipInit with alpha 0 or 1 among them). `run_grid` trains every
configuration in a fresh temporary `model_dir` (a grid cell never resumes
another's checkpoint) and records, per cell, its labels, whether it trained
or diverged, the final training loss, the test accuracy and the wall time.
`pivot_tables`, `markdown_table` and `write_results` turn rows into the JSON
+ markdown pair that scripts/depth_sweep.py and
scripts/batch_size_sensitivity.py publish under scripts/results/; `pyplot`
and `save_figure` draw their figures (matplotlib is the "plot" extra).
"""

import dataclasses
import json
import math
import os
import platform
import tempfile
import time

import keras
import tensorflow as tf

from normzoo.training import loop

TRAINED = "trained"
DIVERGED = "diverged"

# The normalizations the experiments compare, by label: TrainConfig fields.
NORM_VARIANTS = {
    "batch": {"norm": "batch", "skipinit_alpha": None},
    "layer": {"norm": "layer", "skipinit_alpha": None},
    "skipinit0": {"norm": "skipinit", "skipinit_alpha": 0.0},
    "skipinit1": {"norm": "skipinit", "skipinit_alpha": 1.0},
    "none": {"norm": "none", "skipinit_alpha": None},
}


def with_norm(config, variant, **changes):
    """`config` with the normalization `NORM_VARIANTS[variant]` and any other
    field `changes`."""
    if variant not in NORM_VARIANTS:
        raise ValueError(
            f"Unknown normalization variant {variant!r}; choose from {', '.join(NORM_VARIANTS)}."
        )
    return dataclasses.replace(config, **NORM_VARIANTS[variant], **changes)


def run_cell(labels, config, *, log=print):
    """Trains `config` in a temporary directory and returns its result row.

    Args:
        labels: A dict naming the cell (e.g. {"depth": 16, "norm": "batch"});
            copied into the row.
        config: A `normzoo.training.TrainConfig`; its `model_dir` is replaced
            by a fresh temporary directory, deleted afterwards.
        log: Called with one line per finished cell; None for silence.

    Returns:
        A dict: the labels, then "status" (`TRAINED` or `DIVERGED`),
        "final_train_loss" (mean over the last epoch), "final_train_accuracy",
        "test_accuracy", "test_loss" (None when diverged), "steps", "seconds",
        "time_this_run" (where the run's time went, as metrics.json records
        it; None when diverged) and, when diverged, "error" (the
        `TrainingDiverged` message).
    """
    started = time.time()
    row = dict(labels)
    with tempfile.TemporaryDirectory(prefix="normzoo_grid_") as model_dir:
        cell_config = dataclasses.replace(config, model_dir=model_dir)
        try:
            metrics = loop.train(cell_config).metrics
        except loop.TrainingDiverged as error:
            row.update(
                status=DIVERGED,
                final_train_loss=None,
                final_train_accuracy=None,
                test_accuracy=None,
                test_loss=None,
                steps=None,
                time_this_run=None,
                error=str(error),
            )
        else:
            last = metrics["history"][-1]
            row.update(
                status=TRAINED,
                final_train_loss=last.get("train_loss"),
                final_train_accuracy=last.get("train_accuracy"),
                test_accuracy=metrics["test_accuracy"],
                test_loss=metrics["test_loss"],
                steps=metrics["steps"],
                time_this_run=metrics["time_this_run"],
            )
    row["seconds"] = round(time.time() - started, 1)
    if log:
        outcome = (
            f"train loss {row['final_train_loss']:.4f}, test accuracy {row['test_accuracy']:.4f}"
            if row["status"] == TRAINED
            else "diverged"
        )
        labels_text = ", ".join(f"{key}={value}" for key, value in labels.items())
        log(f"{labels_text}: {outcome} ({row['seconds']:.0f} s)")
    return row


def run_grid(cells, *, log=print):
    """`run_cell` on every (labels, config) pair of `cells`, in order; returns
    the list of rows."""
    return [run_cell(labels, config, log=log) for labels, config in cells]


def format_value(value, digits=4):
    """A table cell: floats with `digits` decimals, None and NaN as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header, rows):
    """A GitHub markdown table: `header` is a list of column titles, `rows`
    lists of cells (formatted with `format_value`)."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(format_value(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def pivot(rows, row_key, column_key, value):
    """Rearranges result rows into a table: one line per distinct
    `rows[i][row_key]`, one column per distinct `rows[i][column_key]` (both
    in order of first appearance), cells `value(row)`.

    Returns:
        (row_values, column_values, cells) with cells[r][c] None where no row
        has that pair.
    """
    row_values = list(dict.fromkeys(row[row_key] for row in rows))
    column_values = list(dict.fromkeys(row[column_key] for row in rows))
    cells = [[None] * len(column_values) for _ in row_values]
    for row in rows:
        cells[row_values.index(row[row_key])][column_values.index(row[column_key])] = value(row)
    return row_values, column_values, cells


def _training_share(row):
    """The fraction of a cell's wall time spent in its training steps other
    than the first (which traces and compiles), with their input waits;
    None for a diverged cell."""
    spent = row["time_this_run"]
    if spent is None:
        return None
    return (spent["step_seconds"] + spent["input_wait_seconds"]) / row["seconds"]


# The tables of a grid's markdown: (title, value of a row).
RESULT_TABLES = (
    ("Test accuracy", lambda row: row["test_accuracy"]),
    ("Training loss (mean over the last epoch)", lambda row: row["final_train_loss"]),
    ("Outcome (trained: the loss stayed finite)", lambda row: row["status"]),
    ("Wall time (s)", lambda row: round(row["seconds"])),
    ("Share of the wall time in training steps (the first step, which traces, apart)",
     _training_share),
)


def pivot_tables(rows, row_key, column_key, leading_header, leading, sections=RESULT_TABLES):
    """Markdown: one pivot table (see `pivot`) per (title, value) of
    `sections`. Each line starts with the cells `leading(row_value)`, titled
    `leading_header`, then has one column per value of `column_key`."""
    tables = []
    for title, value in sections:
        row_values, column_values, cells = pivot(rows, row_key, column_key, value)
        body = [[*leading(row_value), *line] for row_value, line in zip(row_values, cells)]
        table = markdown_table([*leading_header, *map(str, column_values)], body)
        tables.append(f"{title}:\n\n{table}")
    return "\n".join(tables)


def write_results(output_prefix, record, markdown):
    """Writes `record` to `<output_prefix>.json` and `markdown` to
    `<output_prefix>.md`, creating the directory; returns both paths."""
    directory = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(directory, exist_ok=True)
    json_path, markdown_path = f"{output_prefix}.json", f"{output_prefix}.md"
    with open(json_path, "w") as file:
        json.dump(record, file, indent=1)
    with open(markdown_path, "w") as file:
        file.write(markdown)
    return json_path, markdown_path


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend.

    Raises:
        ImportError: matplotlib is missing (it is the "plot" extra).
    """
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        raise ImportError(
            'Plotting needs matplotlib: pip install "normzoo[plot]" (or matplotlib).'
        ) from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    return plt


def save_figure(figure, path):
    """Lays out, writes (PNG at 100 dpi) and closes a matplotlib figure."""
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot().close(figure)


def environment():
    """What a result file should say about where it was made."""
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
    }
