"""The figures of lab/benchmark.py: normzoo against Keras and against
this machine's limits, one module per figure.

    from normzoo_lab import benchmarks
    record = benchmarks.run(benchmarks.Settings(quick=True, figures=("P2",), compare_onednn=False),
                            benchmarks.Output("results"))

Where it sits: above training, bn, checkpoints and models (it measures
them) and `normzoo_lab.benchmarking` (the timers, step functions and FLOP
counts it measures with); below lab/benchmark.py and
lab/benchmark_layers.py, which only parse flags (`cli`), call `run`
and print. Nothing in normzoo imports it.

Inside: `records` (what a figure returns) and `settings` (what a run is
told) at the bottom; `shared` (what several figures measure on) and
`subprocess_run`; one module per figure; `figures` (the registry, in run
order); `report` (the one renderer of benchmark.json and BENCHMARKS.md)
and `runner` (the loop over the figures); `cli` on top.

To add a row:

- to an existing figure, add it to what that figure's `measure` returns
  (for P2, a `p2_batch_norm.Case` in `CASES`: a model function taking the
  layer to compare, a batch function, and the layer arguments);
- as a new figure, write a module beside the others with
  `measure(settings, shared) -> FigureResult`, a `note(measurement)` for
  the table's notes column, and `FIGURE = Figure("P8", measure, note,
  uses=...)`; list it in `figures.FIGURES`; add the settings it reads to
  `Settings` (each field becomes a flag, with its --quick value). Work that
  must start in a fresh process (another Keras backend, logical devices,
  environment variables read at start-up) goes through
  `subprocess_run.call`, as P4 and the oneDNN comparison do.
"""

from normzoo_lab.benchmarks.figures import BY_ID, FIGURES
from normzoo_lab.benchmarks.records import Figure, FigureResult, Measurement, measurement
from normzoo_lab.benchmarks.report import Output, markdown
from normzoo_lab.benchmarks.runner import run
from normzoo_lab.benchmarks.settings import Settings

__all__ = [
    "BY_ID",
    "FIGURES",
    "Figure",
    "FigureResult",
    "Measurement",
    "Output",
    "Settings",
    "markdown",
    "measurement",
    "run",
]
