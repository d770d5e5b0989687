"""Grids of training runs, learning rates tuned per cell, and their result
tables, for the experiment scripts.

    base = TrainConfig.from_flat(model="wrn_16_2", epochs=3, verbose=False)
    train_split, validation_split = validation_splits("digits", 0.2)
    cells = [
        ({"norm": v}, with_norm(base, v, train_split=train_split), [0.05, 0.1, 0.2])
        for v in ("batch", "skipinit0", "none")
    ]
    rows = run_rate_grid(cells, seeds=[0, 1], validation_split=validation_split)
    summaries = summarize(rows, ["norm"])

`with_norm` sets a configuration's normalization by label (`NORM_VARIANTS`:
SkipInit with alpha 0, 1/sqrt(d) or 1 among them). `run_cell` trains one
configuration in a fresh temporary `model_dir` (a grid cell never resumes
another's checkpoint) and records its labels, whether it trained or
diverged, the final training loss, the test accuracy, the accuracy on a
validation split, the wall time and where it went. `run_rate_grid` trains each cell at
every rate of its grid, selects the rate on the validation split carved
from the training data by `validation_splits` (never on the test set), and
repeats that rate with more seeds; `summarize` gives per cell the selected
rate, the test accuracy there and its spread over seeds, or that every rate
diverged. `depth_claims` and `batch_size_claims` turn the summaries into
verdicts on the articles' claims. `grid_markdown`, `write_results` and
`plot_summaries` write the JSON + markdown + PNG that
lab/depth_sweep.py and lab/batch_size_sensitivity.py publish under
lab/results/ (matplotlib is the "plot" extra).
"""

import json
import math
import os
import platform
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from normzoo import data
from normzoo.training import loop, steps

TRAINED = "trained"
DIVERGED = "diverged"

# The initial SkipInit scalar of "skipinit_rsqrt": 1/sqrt(d) for d blocks.
RSQRT_BLOCKS = "1/sqrt(blocks)"

# The normalizations the experiments compare, by label: TrainConfig fields
# (by their flag names).
NORM_VARIANTS = {
    "batch": {"norm": "batch", "skipinit_alpha": None},
    "layer": {"norm": "layer", "skipinit_alpha": None},
    "skipinit0": {"norm": "skipinit", "skipinit_alpha": 0.0},
    "skipinit_rsqrt": {"norm": "skipinit", "skipinit_alpha": RSQRT_BLOCKS},
    "skipinit1": {"norm": "skipinit", "skipinit_alpha": 1.0},
    "none": {"norm": "none", "skipinit_alpha": None},
}


def with_norm(config, variant, *, num_blocks=None, **changes):
    """`config` with the normalization `NORM_VARIANTS[variant]` and any other
    field `changes` (by flag name, as `TrainConfig.replace` takes them).
    "skipinit_rsqrt" (SkipInit's other safe start, alpha = 1/sqrt(d)) needs
    the model's number of residual blocks `num_blocks`."""
    if variant not in NORM_VARIANTS:
        raise ValueError(
            f"Unknown normalization variant {variant!r}; choose from {', '.join(NORM_VARIANTS)}."
        )
    fields = dict(NORM_VARIANTS[variant])
    if fields["skipinit_alpha"] == RSQRT_BLOCKS:
        if not num_blocks:
            raise ValueError(
                f"{variant!r} starts SkipInit at alpha = 1/sqrt(d): pass num_blocks=d, the "
                "model's number of residual blocks (normzoo.models.wide_resnet.num_blocks)."
            )
        fields["skipinit_alpha"] = 1.0 / math.sqrt(num_blocks)
    return config.replace(**fields, **changes)


def validation_splits(dataset, fraction, *, data_dir=None):
    """(train split, validation split) of `dataset`'s "train" split: its
    first examples and its last `fraction` of them (rounded), by position in
    the prepared data. TFDS slices by position, so the two are deterministic,
    disjoint and together the whole "train" split; the test split is in
    neither.

    Raises:
        ValueError: `fraction` leaves either part empty.
    """
    total = data.num_examples(dataset, "train", data_dir=data_dir)
    held_out = round(total * fraction)
    if not 0 < held_out < total:
        raise ValueError(
            f"A validation fraction of {fraction} leaves {held_out} of the {total} training "
            f"examples of {dataset!r} for validation; choose a fraction in "
            f"[{1 / total:.2g}, {1 - 1 / total:.2g}] (e.g. 0.2)."
        )
    return f"train[:{total - held_out}]", f"train[{total - held_out}:]"


def evaluate_split(model, config, split):
    """{"loss", "accuracy"} of a trained `model` on `split` of
    `config.data.dataset`, preprocessed as the training loop evaluates (no
    augmentation, batches of `config.optimization.batch_size`)."""
    batches = data.load(
        config.data.dataset,
        split,
        data_dir=config.data.data_dir,
        global_batch_size=config.optimization.batch_size,
        training=False,
        image_size=config.data.image_size,
        invert=config.data.invert_images,
    )
    return steps.evaluate(steps.EvalStep(model, tf.distribute.get_strategy()), batches)


def run_cell(labels, config, *, validation_split=None, log=print):
    """Trains `config` in a temporary directory and returns its result row.

    Args:
        labels: A dict naming the cell (e.g. {"depth": 16, "norm": "batch"});
            copied into the row.
        config: A `normzoo.training.TrainConfig`; its `run.model_dir` is
            replaced by a fresh temporary directory, deleted afterwards.
        validation_split: A split of `config.data.dataset` to evaluate the
            trained model on as well (see `validation_splits`), or None.
        log: Called with one line per finished cell; None for silence.

    Returns:
        A dict: the labels, then "status" (`TRAINED` or `DIVERGED`),
        "final_train_loss" (mean over the last epoch), "final_train_accuracy",
        "test_accuracy", "test_loss" (None when diverged), "steps", "seconds",
        "time_this_run" (where the run's time went, as metrics.json records
        it; None when diverged), with a `validation_split`
        "validation_accuracy" and "validation_loss" (None when diverged)
        and, when diverged, "error" (the
        `TrainingDiverged` message).
    """
    started = time.time()
    row = dict(labels)
    with tempfile.TemporaryDirectory(prefix="normzoo_grid_") as model_dir:
        cell_config = config.replace(model_dir=model_dir)
        try:
            result = loop.train(cell_config)
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
            if validation_split:
                row.update(validation_accuracy=None, validation_loss=None)
        else:
            metrics = result.metrics
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
            if validation_split:
                validation = evaluate_split(result.model, cell_config, validation_split)
                row.update(
                    validation_accuracy=validation["accuracy"], validation_loss=validation["loss"]
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


def run_rate_grid(cells, seeds, *, validation_split, log=print):
    """Trains every cell at every learning rate of its grid, selects its rate
    on `validation_split`, and repeats the selected rate with more seeds.

    For each `(labels, config, learning_rates)` of `cells`: `config` is
    trained at every rate of `learning_rates` with `seeds[0]`, the rate with
    the best validation accuracy is selected (`select_rate`), and `config`
    is trained at that rate with each of `seeds[1:]` (none when every rate
    diverged). The test split plays no part in the choice.

    Returns:
        The rows of every run (`run_cell`'s, with "validation_accuracy"),
        labelled with the cell's labels, "learning_rate" and "seed"; the
        input of `summarize`.
    """
    rows = []
    for labels, config, learning_rates in cells:

        def run(rate, seed):
            return run_cell(
                {**labels, "learning_rate": rate, "seed": seed},
                config.replace(learning_rate=rate, seed=seed),
                validation_split=validation_split,
                log=log,
            )

        grid = [run(rate, seeds[0]) for rate in learning_rates]
        rows += grid
        selected = select_rate(grid)
        if selected is not None:
            rows += [run(selected["learning_rate"], seed) for seed in seeds[1:]]
    return rows


def _finite(value):
    return value is not None and math.isfinite(value)


def select_rate(runs):
    """The run of `runs` (one cell, one seed, one run per rate) whose rate is
    selected: the best validation accuracy among those that trained, ties
    broken by the lower validation loss, then the lower rate. None when
    every run diverged."""
    candidates = [
        run for run in runs if run["status"] == TRAINED and _finite(run.get("validation_accuracy"))
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda run: (
            -run["validation_accuracy"],
            run["validation_loss"] if _finite(run.get("validation_loss")) else math.inf,
            run["learning_rate"],
        ),
    )


DIVERGED_AT_EVERY_RATE = "diverged at every rate"


def summarize(rows, cell_keys):
    """One summary per cell of `run_rate_grid`'s rows (a cell: the values of
    `cell_keys`; in order of first appearance).

    Returns:
        Dicts: the cell's labels; "status" (`TRAINED`, or
        `DIVERGED_AT_EVERY_RATE`); "learning_rates" (the grid) and
        "rates_diverged" (how many of them diverged, first seed);
        "selected_learning_rate" and "selected_at_edge" (the smallest or
        largest rate of the grid was selected: the best rate may lie
        outside it); "validation_accuracy" at the selected rate (first
        seed); "test_accuracies" (one per seed at the selected rate, None
        for a seed that diverged), "test_accuracy" (their mean over the
        seeds that trained) and "test_accuracy_spread" (max - min over
        them); "seconds" (all runs of the cell). Fields that need a
        selected rate are None without one.
    """
    cells = {}
    for row in rows:
        cells.setdefault(tuple(row[key] for key in cell_keys), []).append(row)
    summaries = []
    for cell, runs in cells.items():
        first_seed = runs[0]["seed"]
        grid = sorted((run for run in runs if run["seed"] == first_seed), key=lambda r: r["learning_rate"])
        rates = [run["learning_rate"] for run in grid]
        selected = select_rate(grid)
        summary = {
            **dict(zip(cell_keys, cell)),
            "status": TRAINED if selected else DIVERGED_AT_EVERY_RATE,
            "learning_rates": rates,
            "rates_diverged": sum(run["status"] == DIVERGED for run in grid),
            "selected_learning_rate": None,
            "selected_at_edge": None,
            "validation_accuracy": None,
            "test_accuracies": [],
            "test_accuracy": None,
            "test_accuracy_spread": None,
            "seconds": round(sum(run["seconds"] for run in runs), 1),
        }
        if selected:
            rate = selected["learning_rate"]
            at_rate = [run for run in runs if run["learning_rate"] == rate]
            accuracies = [run["test_accuracy"] for run in at_rate]
            trained = [value for value in accuracies if _finite(value)]
            summary.update(
                selected_learning_rate=rate,
                selected_at_edge=len(rates) > 1 and rate in (rates[0], rates[-1]),
                validation_accuracy=selected["validation_accuracy"],
                test_accuracies=accuracies,
                test_accuracy=float(np.mean(trained)) if trained else None,
                test_accuracy_spread=float(max(trained) - min(trained)) if trained else None,
            )
        summaries.append(summary)
    return summaries


# The tables of a learning-rate grid's markdown: (title, value of a summary).
SUMMARY_TABLES = (
    (
        "Test accuracy at the selected learning rate (mean over seeds)",
        lambda cell: cell["test_accuracy"] if cell["status"] == TRAINED else cell["status"],
    ),
    ("Spread of the test accuracy over seeds (max - min)", lambda cell: cell["test_accuracy_spread"]),
    (
        "Selected learning rate (on the validation split; * = an end of the grid)",
        lambda cell: None
        if cell["selected_learning_rate"] is None
        else f"{cell['selected_learning_rate']:.4g}{'*' if cell['selected_at_edge'] else ''}",
    ),
    ("Validation accuracy at the selected rate (first seed)", lambda cell: cell["validation_accuracy"]),
    (
        "Rates of the grid that diverged (first seed)",
        lambda cell: f"{cell['rates_diverged']}/{len(cell['learning_rates'])}",
    ),
    ("Wall time, all runs of the cell (s)", lambda cell: round(cell["seconds"])),
)


def _training_share(row):
    """The fraction of a run's wall time spent in its training steps other
    than the first (which traces and compiles), with their input waits;
    None for a diverged run."""
    spent = row["time_this_run"]
    if spent is None:
        return None
    return (spent["step_seconds"] + spent["input_wait_seconds"]) / row["seconds"]


def rate_table(rows, cell_keys, value):
    """Markdown: one line per cell (the values of `cell_keys`), one column
    per learning rate, cells `value(run)` of the first seed's runs."""
    first_seed = rows[0]["seed"] if rows else None
    runs = [
        {**row, "cell": " ".join(str(row[key]) for key in cell_keys)}
        for row in rows
        if row["seed"] == first_seed
    ]
    rates = sorted({row["learning_rate"] for row in runs})
    cells, _, table = pivot(runs, "cell", "learning_rate", value)
    columns = list(dict.fromkeys(row["learning_rate"] for row in runs))
    body = [[cell, *(line[columns.index(rate)] for rate in rates)] for cell, line in zip(cells, table)]
    return markdown_table([" ".join(cell_keys), *(f"lr {rate:.4g}" for rate in rates)], body)


def grid_markdown(rows, summaries, row_key, column_key, leading_header, leading, claims):
    """The markdown of a learning-rate grid: the claims table, the summary
    tables (`SUMMARY_TABLES`, row_key x column_key) and, for every (cell,
    rate) of the first seed, the validation and test accuracy and the share
    of the run's wall time spent in training steps."""
    cell_keys = [row_key, column_key]

    def outcome(key):
        return lambda run: run[key] if run["status"] == TRAINED else "diverged"

    return "\n".join(
        [
            f"Claims:\n\n{claims_table(claims)}",
            pivot_tables(summaries, row_key, column_key, leading_header, leading, SUMMARY_TABLES),
            "Validation accuracy by learning rate (first seed):\n\n"
            + rate_table(rows, cell_keys, outcome("validation_accuracy")),
            "Test accuracy by learning rate (first seed; not used to select):\n\n"
            + rate_table(rows, cell_keys, outcome("test_accuracy")),
            "Share of the wall time in training steps by learning rate (first seed; "
            "the first step, which traces, apart):\n\n"
            + rate_table(rows, cell_keys, _training_share),
        ]
    )


AGREES = "agrees"
DISAGREES = "disagrees"
NOT_TESTED = "not tested"


def _claim(claim, verdict, numbers):
    return {"claim": claim, "verdict": verdict, "numbers": numbers}


def _accuracies(summaries, key):
    """{(summary[key], norm): test accuracy at the selected rate, or None
    where every rate diverged}."""
    return {(cell[key], cell["norm"]): cell["test_accuracy"] for cell in summaries}


def _gaps_claim(claim, accuracy, depths, reference, variant, margin, *, two_sided):
    """`variant` is within `margin` of `reference` at every depth where both
    ran: reference - variant <= margin, or |reference - variant| <= margin
    when `two_sided`. A variant that diverged at every rate is not within;
    nor, when `two_sided`, is one whose reference diverged at every rate."""
    pairs = [depth for depth in depths if (depth, reference) in accuracy and (depth, variant) in accuracy]
    if not pairs:
        return _claim(claim, NOT_TESTED, f"no depth has both {reference} and {variant}")
    numbers, within = [], True
    for depth in pairs:
        ours, theirs = accuracy[(depth, variant)], accuracy[(depth, reference)]
        if ours is None or theirs is None:
            failed = variant if ours is None else reference
            numbers.append(f"depth {depth}: {failed} diverged at every rate")
            within = within and ours is not None and not two_sided
            continue
        gap = theirs - ours
        within = within and (abs(gap) if two_sided else gap) <= margin
        numbers.append(f"depth {depth}: {reference} {theirs:.3f}, {variant} {ours:.3f} (difference {gap:+.3f})")
    return _claim(claim, AGREES if within else DISAGREES, "; ".join(numbers))


def depth_claims(summaries, *, batch_size, margin=0.02, failure_accuracy=0.5):
    """The depth sweep's verdicts on the SkipInit article (De & Smith 2020).

    Args:
        summaries: `summarize(rows, ["depth", "norm"])` of a depth sweep.
        batch_size: The sweep's batch size (the parity claim is made for
            batches <= 64).
        margin: Largest test-accuracy difference that counts as "matches".
        failure_accuracy: A variant "fails" at a depth where every rate
            diverged or the selected rate's test accuracy is below this.

    Returns:
        A list of {"claim", "verdict" (`AGREES`, `DISAGREES` or
        `NOT_TESTED`), "numbers", "spread" (the test-accuracy spread over
        seeds of the cells it reads)}: (1) SkipInit alpha = 0 at most `margin`
        below BatchNorm at every depth; (2) alpha = 1 and no normalization fail,
        from some depth on, at every deeper depth (and at the deepest);
        (3) alpha = 1/sqrt(d) within `margin` of alpha = 0 at every depth.
    """
    accuracy = _accuracies(summaries, "depth")
    depths = sorted({cell["depth"] for cell in summaries})
    parity = (
        f"With tuned rates SkipInit (alpha = 0) is at most {margin:.3f} below BatchNorm at "
        f"every depth (batch {batch_size})"
    )
    if batch_size > 64:
        claims = [
            _claim(parity, NOT_TESTED, f"the article's claim is for batch <= 64; this sweep used {batch_size}")
        ]
    else:
        claims = [_gaps_claim(parity, accuracy, depths, "batch", "skipinit0", margin, two_sided=False)]

    failing = (
        f"alpha = 1 and no normalization fail (test accuracy < {failure_accuracy} or divergence) "
        "at every rate of the grid from some depth on"
    )
    numbers, verdicts = [], []
    for variant in ("skipinit1", "none"):
        tested = [depth for depth in depths if (depth, variant) in accuracy]
        if len(tested) < 2:
            numbers.append(f"{variant}: fewer than 2 depths")
            continue
        fails = [
            accuracy[(depth, variant)] is None or accuracy[(depth, variant)] < failure_accuracy
            for depth in tested
        ]
        shown = ", ".join(
            f"{depth}: " + ("diverged" if value is None else f"{value:.3f}")
            for depth, value in ((depth, accuracy[(depth, variant)]) for depth in tested)
        )
        # Fails at the deepest depth and at every depth beyond the first failure.
        onset = next((i for i, fail in enumerate(fails) if fail), None)
        monotone = onset is not None and all(fails[onset:])
        verdicts.append(monotone)
        start = (
            f"fails from depth {tested[onset]}"
            if monotone
            else "does not fail at every depth beyond a first failure"
        )
        numbers.append(f"{variant} {start} (test accuracy by depth {shown})")
    verdict = NOT_TESTED if not verdicts else AGREES if all(verdicts) else DISAGREES
    claims.append(_claim(failing, verdict, "; ".join(numbers)))

    claims.append(
        _gaps_claim(
            f"SkipInit with alpha = 1/sqrt(d) trains like alpha = 0 (within {margin:.3f}) at every depth",
            accuracy, depths, "skipinit0", "skipinit_rsqrt", margin, two_sided=True,
        )
    )
    for claim, norms in zip(claims[-3:], (("batch", "skipinit0"), ("skipinit1", "none"), ("skipinit0", "skipinit_rsqrt"))):
        claim["spread"] = _spreads(summaries, "depth", norms)
    return claims


def _spreads(summaries, key, norms, values=None):
    """The test-accuracy spread over seeds (max - min) of the cells of
    `norms` (at `values` of `key`, or at every value), as "depth 16:
    batch 0.017, skipinit0 0.042; ...": what a claim's differences are to
    be read against."""
    cells = {(cell[key], cell["norm"]): cell["test_accuracy_spread"] for cell in summaries}
    parts = []
    for value in sorted({cell[key] for cell in summaries} if values is None else values):
        shown = [
            f"{norm} {cells[(value, norm)]:.3f}"
            for norm in norms
            if cells.get((value, norm)) is not None
        ]
        if shown:
            parts.append(f"{key.replace('_', ' ')} {value}: {', '.join(shown)}")
    return "; ".join(parts) or "-"


def _slope(xs, ys):
    """Least-squares slope of ys against xs."""
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def batch_size_claims(summaries, *, small_batch=8):
    """The batch-size sweep's verdicts on the articles (De & Smith 2020,
    Figure 5; articles 001 and 003).

    Args:
        summaries: `summarize(rows, ["batch_size", "norm"])` of a sweep.
        small_batch: Largest batch size of the small-batch claim.

    Returns:
        A list of {"claim", "verdict", "numbers", "spread"} (as
        `depth_claims`): (1) BatchNorm's selected
        rate grows faster with the batch size than SkipInit's (slope of
        log2(rate) against log2(batch size), over the batch sizes where both
        trained); (2) BatchNorm's lead over SkipInit grows with the batch size
        (slope of the accuracy difference against log2(batch size) > 0);
        (3) at batch sizes <= `small_batch`, LayerNorm is at least as
        accurate as BatchNorm at every one.
    """
    accuracy = _accuracies(summaries, "batch_size")
    rate = {(cell["batch_size"], cell["norm"]): cell["selected_learning_rate"] for cell in summaries}
    sizes = sorted({cell["batch_size"] for cell in summaries})
    both = [
        size
        for size in sizes
        if accuracy.get((size, "batch")) is not None and accuracy.get((size, "skipinit0")) is not None
    ]
    claims = []

    claim = "BatchNorm's selected learning rate grows with the batch size faster than SkipInit's"
    if len(both) < 2:
        claims.append(_claim(claim, NOT_TESTED, "fewer than 2 batch sizes where batch and skipinit0 trained"))
    else:
        logs = np.log2(both)
        slopes = {
            norm: _slope(logs, np.log2([rate[(size, norm)] for size in both])) for norm in ("batch", "skipinit0")
        }
        rates = "; ".join(
            f"batch {size}: {rate[(size, 'batch')]:.4g} vs {rate[(size, 'skipinit0')]:.4g}" for size in both
        )
        claims.append(
            _claim(
                claim,
                AGREES if slopes["batch"] > slopes["skipinit0"] else DISAGREES,
                f"slope of log2(rate) per doubling of the batch: BatchNorm {slopes['batch']:.2f}, "
                f"SkipInit {slopes['skipinit0']:.2f} (selected rates, BatchNorm vs SkipInit: {rates})",
            )
        )

    claim = "BatchNorm's lead over SkipInit grows with the batch size"
    if len(both) < 2:
        claims.append(_claim(claim, NOT_TESTED, "fewer than 2 batch sizes where batch and skipinit0 trained"))
    else:
        leads = [accuracy[(size, "batch")] - accuracy[(size, "skipinit0")] for size in both]
        slope = _slope(np.log2(both), leads)
        shown = ", ".join(f"{size}: {lead:+.3f}" for size, lead in zip(both, leads))
        claims.append(
            _claim(
                claim,
                AGREES if slope > 0 else DISAGREES,
                f"lead (BatchNorm - SkipInit test accuracy) by batch size {shown}; "
                f"slope {slope:+.4f} per doubling",
            )
        )

    claim = f"At batch sizes <= {small_batch}, LayerNorm is at least as accurate as BatchNorm (articles 001, 003)"
    small = [
        size
        for size in sizes
        if size <= small_batch and (size, "layer") in accuracy and (size, "batch") in accuracy
    ]
    if not small:
        claims.append(_claim(claim, NOT_TESTED, f"no batch size <= {small_batch} has both layer and batch"))
    else:
        numbers, holds = [], True
        for size in small:
            layer, batch = accuracy[(size, "layer")], accuracy[(size, "batch")]
            if layer is None or batch is None:
                holds = holds and batch is None
                numbers.append(f"batch {size}: {'layer' if layer is None else 'batch'} diverged at every rate")
                continue
            holds = holds and layer >= batch
            numbers.append(f"batch {size}: LayerNorm {layer:.3f}, BatchNorm {batch:.3f} ({layer - batch:+.3f})")
        claims.append(_claim(claim, AGREES if holds else DISAGREES, "; ".join(numbers)))
    for claim in claims[:2]:
        claim["spread"] = _spreads(summaries, "batch_size", ("batch", "skipinit0"))
    claims[2]["spread"] = _spreads(summaries, "batch_size", ("layer", "batch"), small)
    return claims


def claims_table(claims):
    """Markdown table of `depth_claims` / `batch_size_claims`."""
    lines = ["| claim | verdict | numbers | spread of the test accuracy over seeds (max - min) |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['numbers']} | {c.get('spread', '-')} |" for c in claims]
    return "\n".join(lines) + "\n"


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


def pivot_tables(rows, row_key, column_key, leading_header, leading, sections):
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


def plot_summaries(summaries, x_key, path, *, xlabel, title):
    """Writes a PNG of two panels against `x_key` (log2 axis), one line per
    norm: the test accuracy at the selected rate (bars: the range over
    seeds) and the selected learning rate. A cell that diverged at every
    rate leaves a gap."""
    pyplot_ = pyplot()
    xs, norms, cells = pivot(summaries, x_key, "norm", lambda cell: cell)
    figure, (accuracy_axes, rate_axes) = pyplot_.subplots(1, 2, figsize=(11, 4.4))
    for column, norm in enumerate(norms):
        line = [cells[row][column] for row in range(len(xs))]

        def values(key, line=line):
            return [float("nan") if c is None or c[key] is None else c[key] for c in line]

        spread = [0.0 if math.isnan(v) else v / 2 for v in values("test_accuracy_spread")]
        accuracy_axes.errorbar(xs, values("test_accuracy"), yerr=spread, fmt="o-", capsize=3, label=norm)
        rate_axes.plot(xs, values("selected_learning_rate"), "o-", label=norm)
    for axes, ylabel in ((accuracy_axes, "test accuracy at the selected rate"), (rate_axes, "selected learning rate")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
    if any(cell["selected_learning_rate"] for cell in summaries):  # a log axis needs a value
        rate_axes.set_yscale("log", base=2)
    accuracy_axes.legend(title="norm")
    figure.suptitle(title)
    save_figure(figure, path)


def environment():
    """What a result file should say about where it was made."""
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
    }
