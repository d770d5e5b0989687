"""The one renderer of a benchmark run: benchmark.json and BENCHMARKS.md.

A run's record is a plain dict, which is what benchmark.json holds:

    complete             False while the run is going (a stopped run keeps
                         what it measured)
    machine              `benchmarking.machine()` at the start
    onednn_enabled       whether this process ran oneDNN kernels
    config               the `Settings`, as a dict
    matmul_peak_flops    P6's and P7's denominator (None if not measured)
    figure_seconds       {figure id or shared resource: wall seconds}
    measurements         `Measurement`s as dicts, in the order measured
    wrn_depths, onednn   the tables of P7 and of the oneDNN comparison
                         (each figure's `Figure.tables`)
    finished, seconds, load_average_at_end

`markdown(record)` renders it (also from a benchmark.json read back):
the machine, the Figures table with each figure's note, each figure's
section, the settings that mattered as flags.
"""

import dataclasses
import json
import math
import os

from normzoo_lab.benchmarks import settings
from normzoo_lab.benchmarks.figures import BY_ID, FIGURES
from normzoo_lab.benchmarks.settings import Settings


def format_value(value, unit):
    """`value` as the Figures table shows a number of `unit`."""
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "R^2":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3f}"


def summary_line(m):
    """One measurement as a line of text: name, value, target, note."""
    return (f"{m['figure']} {m['name']}: {format_value(m['value'], m['unit'])} "
            f"(target {m['target']}: {'met' if m['met'] else 'MISSED'}) {BY_ID[m['figure']].note(m)}")


def markdown(record, script="lab/benchmark.py", json_name="benchmark.json"):
    """BENCHMARKS.md's text for `record`, as written by `script` beside
    `json_name`."""
    machine, config = record["machine"], record["config"]
    loads = machine["load_average"] + record["load_average_at_end"]
    shown = _settings_read(config)
    lines = [
        "# normzoo benchmarks",
        "",
        f"Written by `{script}` on {record['finished']} in {record['seconds'] / 60:.1f} min"
        + (" with `--quick` (tiny sizes: these numbers mean nothing)." if config["quick"] else "."),
        "Ratios are medians of candidates timed in alternating rounds in one process.",
        *([] if record["complete"] else ["", "**Partial: the run had not finished when this was written.**"]),
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']} ({', '.join(machine['vector_extensions'])}), "
        f"{machine['cores']} cores ({machine['cores_usable']} usable), {machine['memory_gib']} GiB",
        f"- TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, Python {machine['python']}, "
        f"{machine['platform']}; GPUs: {machine['gpus'] or 'none'}",
        "- Environment: " + ", ".join(f"{k}={v}" for k, v in machine["environment"].items()),
        f"- oneDNN enabled in this process: {record['onednn_enabled']}",
        f"- Load average at start {machine['load_average']}, at end {record['load_average_at_end']}"
        + (" (above the core count: the machine was shared and times are noisy)."
           if max(loads) > machine["cores_usable"] else " (below the core count: nothing else ran)."),
        "",
        "## Figures",
        "",
        "| figure | measurement | value | target | met | notes |",
        "|---|---|---|---|---|---|",
    ]
    for m in record["measurements"]:
        lines.append(f"| {m['figure']} | {m['name']} | {format_value(m['value'], m['unit'])} | "
                     f"{m['target']} | {'yes' if m['met'] else '**no**'} | {BY_ID[m['figure']].note(m)} |")
    for figure in FIGURES:
        section = figure.section(record)
        if section:
            lines += ["", *section]
    lines += [
        "",
        "## Configuration",
        "",
        "```",
        *(f"--{k}={','.join(v) if isinstance(v, (list, tuple)) else v}"
          for k, v in config.items() if k in shown),
        "```",
        "",
        f"Full numbers: `{json_name}` beside this file.",
        "",
    ]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Output:
    """Where a run writes its record: `directory/json_name` and its
    Markdown `directory/markdown_name`, which names `script`."""

    directory: str
    json_name: str = "benchmark.json"
    markdown_name: str = "BENCHMARKS.md"
    script: str = "lab/benchmark.py"

    def write(self, record):
        """Writes `record` and its Markdown; returns the Markdown."""
        os.makedirs(self.directory, exist_ok=True)
        text = markdown(record, self.script, self.json_name)
        with open(os.path.join(self.directory, self.json_name), "w") as file:
            json.dump(record, file, indent=1, default=_json_default)
        with open(os.path.join(self.directory, self.markdown_name), "w") as file:
            file.write(text)
        return text


def _settings_read(config):
    """The settings that choose what the run of `config` measured, and those
    its figures read (the others changed nothing)."""
    run_settings = Settings.from_dict(config)
    return settings.used_by([figure.id for figure in FIGURES if figure.is_selected(run_settings)], selection=True)


def _json_default(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"Not JSON serializable: {type(value).__name__}")
