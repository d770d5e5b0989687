"""Measures the selected figures one after another and writes the record
after each, so that a long run that is stopped keeps its finished figures."""

import dataclasses
import os
import time

from absl import logging

from normzoo import runtime
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks.figures import FIGURES
from normzoo_lab.benchmarks.shared import Shared


def run(settings, output):
    """Measures every figure of `FIGURES` that `settings` selects, in that
    order, writing the record (see `normzoo_lab.benchmarks.report`) with
    `output.write` (a `report.Output`) after each.

    Returns:
        The final record (its "complete" is True).

    Raises:
        ValueError: from `settings.check()`, before anything is measured.
    """
    settings.check()
    started = time.time()
    start = {
        "machine": benchmarking.machine(),
        "onednn_enabled": runtime.onednn_enabled(),
        "config": dataclasses.asdict(settings),
    }
    chosen = [figure for figure in FIGURES if figure.is_selected(settings)]
    shared = Shared(settings)
    results, seconds = [], {}
    for index, figure in enumerate(chosen):
        begin = time.perf_counter()
        results.append(figure.measure(settings, shared))
        seconds[figure.id] = time.perf_counter() - begin
        logging.info("%s: %.1f s", figure.id, seconds[figure.id])
        shared.release({resource for later in chosen[index + 1:] for resource in later.uses})
        output.write(_record(start, shared, results, seconds, started, complete=False))
    record = _record(start, shared, results, seconds, started, complete=True)
    output.write(record)
    return record


def _record(start, shared, results, seconds, started, complete):
    tables = {key: value for figure in FIGURES for key, value in figure.tables.items()}
    for result in results:
        tables.update(result.tables)
    return {
        "complete": complete,
        **start,
        "matmul_peak_flops": shared.matmul_peak_flops,
        # A shared resource's time is also in the time of the figure that
        # first needed it.
        "figure_seconds": {**shared.seconds, **seconds},
        "measurements": [dataclasses.asdict(m) for result in results for m in result.measurements],
        **tables,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": time.time() - started,
        "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
    }
