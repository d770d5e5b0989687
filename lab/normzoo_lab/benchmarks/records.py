"""What a benchmark figure returns, and what describes a figure to the runner.

A figure's `measure(settings, shared)` returns a `FigureResult`: a list of
`Measurement`s (the rows of the Figures table of BENCHMARKS.md, and of
benchmark.json's "measurements") and, for a figure with a table of its
own, that table under its top-level key of benchmark.json.
"""

import dataclasses
import operator
from collections.abc import Callable

_COMPARISONS = {"<": operator.lt, "<=": operator.le, ">=": operator.ge, ">": operator.gt}

UNITS = ("ratio", "x", "s", "fraction", "R^2")


@dataclasses.dataclass
class Measurement:
    """One number measured against its target: a row of the Figures table.

    `dataclasses.asdict(measurement)` is its entry in benchmark.json's
    "measurements", with these keys.

    Attributes:
        figure: the figure's id ("P1", ...).
        name: what was measured; unique in a run.
        value: the number.
        unit: how it is shown: "ratio" (3 decimals), "x" (a speed-up),
            "s" (seconds), "fraction" (a percentage) or "R^2".
        target: "<comparison> <bound>", e.g. "<= 1.05".
        met: whether `value` meets `target`.
        details: JSON-serializable numbers that explain `value` (the
            figure's `note` shows the ones that matter in the table).
    """

    figure: str
    name: str
    value: float
    unit: str
    target: str
    met: bool
    details: dict


def measurement(figure, name, value, unit, target, **details):
    """A `Measurement` whose `met` is computed from `target`, so that the
    target shown and the target checked cannot disagree.

    Raises:
        ValueError: `unit` is not one of `UNITS`, or `target` is not
            "<comparison> <number>" with a comparison of <, <=, >=, >.
    """
    if unit not in UNITS:
        raise ValueError(f"Unknown unit {unit!r}; use one of {', '.join(UNITS)}.")
    comparison, _, bound = target.partition(" ")
    if comparison not in _COMPARISONS:
        raise ValueError(
            f"Target {target!r} does not start with a comparison; write it as e.g. '<= 1.05' "
            f"(one of {', '.join(_COMPARISONS)}, a space, a number)."
        )
    met = bool(_COMPARISONS[comparison](value, float(bound)))
    return Measurement(figure, name, value, unit, target, met, details)


@dataclasses.dataclass
class FigureResult:
    """What a figure's `measure` returns.

    Attributes:
        measurements: its `Measurement`s, in the order of the table.
        tables: top-level entries of benchmark.json that the figure fills
            (keys of its `Figure.tables`), e.g. P7's per-depth rows.
    """

    measurements: list
    tables: dict = dataclasses.field(default_factory=dict)


def _no_note(measurement):
    return ""


def _no_section(record):
    return []


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure of lab/benchmark.py, as the runner and the renderer see it.

    Attributes:
        id: "P1", ...: what `--figures` selects and `Measurement.figure` holds.
        measure: `(settings, shared) -> FigureResult`; `settings` is a
            `Settings`, `shared` the run's `Shared` resources.
        note: `(measurement dict) -> str`, the table's notes column for one
            of its measurements (as read back from benchmark.json).
        section: `(record) -> list of Markdown lines` shown after the
            Figures table (its own tables), or [] when it has none.
        uses: names of the `Shared` resources `measure` uses; the runner
            releases a resource when no later figure uses it.
        tables: {top-level key of benchmark.json: value when the figure
            did not run}, for the keys its `FigureResult.tables` fills.
        selected: `(settings) -> bool`, whether a run measures it (by
            default: its id is in `settings.figures`).
    """

    id: str
    measure: Callable
    note: Callable = _no_note
    section: Callable = _no_section
    uses: tuple = ()
    tables: dict = dataclasses.field(default_factory=dict)
    selected: Callable = None

    def is_selected(self, settings):
        if self.selected is not None:
            return self.selected(settings)
        return self.id in settings.figures
