"""P7: how the cost of a WRN-n-2 grows with its number of residual blocks.

For each depth of `settings.wrn_depths`: the build, the tracing, the
training step with and without XLA, and XLA's compile time; then a
least-squares line `a + b * blocks` through each of four of them, with its
R^2 (target >= 0.95: the cost per block is constant, nothing grows faster
than the network) and its residuals. The per-depth rows are benchmark.json's
"wrn_depths".
"""

import gc
import time

import keras
from absl import logging

from normzoo_lab import benchmarking
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement

NUM_CLASSES = 10

FITS = (
    ("graph_step_seconds", "training step time"),
    ("xla_step_seconds", "training step time, XLA"),
    ("xla_compile_seconds", "XLA compile time"),
    ("trace_seconds", "tracing time of the step"),
)


def measure(settings, shared):
    peak = shared.matmul_peak()
    batch = benchmarking.random_batch(settings.wrn_batch_size, settings.wrn_image_size, NUM_CLASSES)
    rows = []
    for depth in sorted(int(d) for d in settings.wrn_depths):
        rows.append(depth_row(settings, shared, depth, batch, peak))
        logging.info("P7 %s: %s", rows[-1]["model"], rows[-1])
        keras.backend.clear_session()
        gc.collect()
    blocks = [row["blocks"] for row in rows]
    measurements = []
    for key, what in FITS:
        fit = benchmarking.linear_fit(blocks, [row[key] for row in rows])
        measurements.append(measurement(
            "P7", f"WRN-n-2 {what} = a + b * blocks: R^2", fit.r_squared, "R^2", ">= 0.95",
            seconds_per_block=fit.slope, intercept_seconds=fit.intercept,
            residual_seconds=dict(zip([row["model"] for row in rows], fit.residuals, strict=True)),
            batch_size=settings.wrn_batch_size, image_size=settings.wrn_image_size,
        ))
    return FigureResult(measurements, {"wrn_depths": rows})


def depth_row(settings, shared, depth, batch, peak):
    """The measurements of WRN-`depth`-2 trained on `batch`: a row of
    "wrn_depths"."""
    name = f"wrn_{depth}_2"
    images, labels = batch
    keras.utils.set_random_seed(0)
    model, build_seconds, _ = shared.take_built_model(name)
    graph = benchmarking.train_step(model, "graph")
    start = time.perf_counter()
    graph.get_concrete_function(images, labels)
    trace = time.perf_counter() - start
    # Traced anew under jit_compile, as a user's step would be: normzoo's
    # BatchNorm traces differently inside XLA (see BatchNorm's docstring).
    xla = benchmarking.train_step(model, "xla")
    start = time.perf_counter()
    xla.get_concrete_function(images, labels)
    xla_trace = time.perf_counter() - start
    times = benchmarking.compare(
        {"graph": (graph, (images, labels)), "xla": (xla, (images, labels))},
        rounds=settings.wrn_rounds, steps_per_round=settings.steps_per_round,
        warmup_steps=settings.warmup_steps,
    )
    forward = benchmarking.forward_multiply_adds(model)
    return {
        "model": name,
        "blocks": (depth - 4) // 2,
        "parameters": model.count_params(),
        "build_seconds": build_seconds,
        "graph_step_seconds": times["graph"].median,
        # Graph optimization and the first run (the Python trace is before).
        "graph_first_call_seconds": times["graph"].first_call,
        "xla_step_seconds": times["xla"].median,
        "trace_seconds": trace,
        "xla_trace_seconds": xla_trace,
        "xla_compile_seconds": times["xla"].first_call - times["xla"].median,
        "graph_flops_fraction": 6 * forward * settings.wrn_batch_size / times["graph"].median / peak,
    }


def note(m):
    d = m["details"]
    return f"b = {1e3 * d['seconds_per_block']:.2f} ms/block, a = {d['intercept_seconds']:.2f} s"


def section(record):
    """The per-depth table and the residuals of the fits."""
    rows, config = record["wrn_depths"], record["config"]
    if not rows:
        return []
    lines = [
        f"## P7: WRN-n-2 by depth (batch {config['wrn_batch_size']}, "
        f"{config['wrn_image_size']}x{config['wrn_image_size']})",
        "",
        "| model | blocks | parameters | build (s) | step (s) | first call (s) | XLA step (s) "
        "| trace (s) | XLA trace (s) | XLA compile (s) | FLOP/s fraction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['blocks']} | {row['parameters']:,} | {row['build_seconds']:.1f} | "
            f"{row['graph_step_seconds']:.3f} | {row['graph_first_call_seconds']:.1f} | "
            f"{row['xla_step_seconds']:.3f} | {row['trace_seconds']:.1f} | "
            f"{row['xla_trace_seconds']:.1f} | {row['xla_compile_seconds']:.1f} | "
            f"{100 * row['graph_flops_fraction']:.1f}% |"
        )
    lines += ["", "Residuals of the fits (s): " + "; ".join(
        f"{m['name'].split(' = ')[0]}: "
        + ", ".join(f"{k} {v:+.3f}" for k, v in m["details"]["residual_seconds"].items())
        for m in record["measurements"] if m["figure"] == "P7"
    )]
    return lines


FIGURE = Figure("P7", measure, note, section, uses=("matmul_peak", "built_model"), tables={"wrn_depths": []})
