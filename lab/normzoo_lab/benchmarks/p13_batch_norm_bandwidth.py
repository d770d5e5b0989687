"""P13: BatchNorm against the memory limit.

One training step of a BatchNorm layer alone, forward and backward (the
output, the gradients of x, gamma and beta, the moving statistics
updated), on a tensor of a ResNet-50 stage ((32, 56, 56, 64) float32 by
default), for normzoo's `BatchNorm` beside `keras.layers.BatchNormalization`
in each of `MODES`: TensorFlow graph (`tf.function`), TensorFlow XLA
(`tf.function(jit_compile=True)`), JAX (`jax.jit`), PyTorch (eager) and
PyTorch `torch.compile`. Each backend runs in a process of its own (Keras
fixes its backend when it is imported), where both layers' steps are timed
in alternating rounds (`benchmarking.compare`).

The step does almost no arithmetic per element: its speed is how fast it
moves the tensor. `bytes_moved` is what any implementation must move,
neither phase being able to write its output before a reduction over the
whole tensor has finished:

    forward:  read x (the moments), read x (normalize), write y   3 passes
    backward: read dy and x (sum(dy), sum(dy * x_hat)),
              read dy and x, write dx                               5 passes

8 passes of the tensor (a fused kernel that keeps nothing between its
passes does exactly this; reading y instead of x in the backward pass
moves the same). The effective bandwidth is those bytes over the median
step time, and its fraction of the copy bandwidth measured in the same
run (`copy_samples`: `np.copyto` of an array of the tensor's size into
another one allocated beforehand, counted as 2 passes, read and write,
timed before and after the steps). The copy moves the same bytes through
the same caches (the tensor fits this machine's shared L3), so the
fraction says how far the step is from moving its bytes at a copy's
speed.

Targets: normzoo / Keras <= 1.0 in every mode, and normzoo's XLA step no
slower than its graph step. Each mode's normzoo step is profiled
(TensorFlow's profiler for graph and XLA, JAX's, PyTorch's); where it
stays under `PROFILE_BELOW` of the copy bandwidth, the note lists the ops
that take the time.
"""

import collections
import glob
import math
import statistics
import tempfile

import keras
import numpy as np

from normzoo import backends
from normzoo.layers import BatchNorm
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks import subprocess_run
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement

if backends.TENSORFLOW:
    import tensorflow as tf
if backends.BACKEND == "jax":
    import jax
if backends.BACKEND in ("tensorflow", "jax"):
    # The format of TensorFlow's and JAX's profiler traces; it ships with
    # TensorFlow, which the lab's JAX processes import anyway (P2, P10).
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
if backends.BACKEND == "torch":
    import torch

# {mode: (Keras backend, what it is)}, in the order of the figure.
MODES = {
    "graph": ("tensorflow", "TensorFlow graph (tf.function)"),
    "xla": ("tensorflow", "TensorFlow XLA (tf.function(jit_compile=True))"),
    "jax": ("jax", "JAX (jax.jit)"),
    "torch": ("torch", "PyTorch (eager)"),
    "torch_compile": ("torch", "PyTorch (torch.compile)"),
}
BATCH_NORMS = {"normzoo": BatchNorm, "keras": keras.layers.BatchNormalization}

FORWARD_PASSES = 3  # read x twice, write y
BACKWARD_PASSES = 5  # read dy and x twice, write dx
PASSES = FORWARD_PASSES + BACKWARD_PASSES
COPY_PASSES = 2  # read the source, write the destination
PROFILE_BELOW = 0.3
TOP_OPS = 5
PROFILED_STEPS = 3


def tensor_shape(settings):
    """The (batch, height, width, channels) of the normalized tensor."""
    size = settings.bandwidth_image_size
    return (settings.bandwidth_batch_size, size, size, settings.bandwidth_channels)


def bytes_moved(shape, itemsize=4, passes=PASSES):
    """Bytes that `passes` passes over a tensor of `shape` move."""
    return passes * math.prod(shape) * itemsize


def gigabytes_per_second(num_bytes, seconds):
    return num_bytes / seconds / 1e9


def measure(settings, shared):
    copy_seconds = copy_samples(settings)
    results = {}
    for backend in dict.fromkeys(MODES[mode][0] for mode in settings.bandwidth_modes):
        if backend == backends.BACKEND:
            results.update(measure_in_process(settings))
        else:
            results.update(subprocess_run.call(measure_in_process, settings, {"KERAS_BACKEND": backend}))
    copy_seconds += copy_samples(settings)
    copy = copy_bandwidth(tensor_shape(settings), copy_seconds)
    rows = [bandwidth_row(results[mode], copy) for mode in settings.bandwidth_modes]
    name = "BatchNorm training forward + backward on a {} float32 tensor, normzoo / keras ({})"
    measurements = [
        measurement("P13", name.format(tuple(row["shape"]), MODES[row["mode"]][1]), row["ratio"], "ratio", "<= 1.0",
                    **row)
        for row in rows if "error" not in row
    ]
    if all(mode in results and "error" not in results[mode] for mode in ("graph", "xla")):
        graph, xla = results["graph"], results["xla"]
        measurements.append(measurement(
            "P13", f"normzoo BatchNorm training forward + backward on a {tuple(graph['shape'])} float32 tensor, "
            "TensorFlow XLA / graph", xla["normzoo_ms"] / graph["normzoo_ms"], "ratio", "<= 1.0",
            xla_ms=xla["normzoo_ms"], graph_ms=graph["normzoo_ms"], shape=graph["shape"],
        ))
    return FigureResult(measurements, {"batch_norm_bandwidth": rows})


def copy_samples(settings):
    """Seconds per `np.copyto` of an array of P13's tensor's size into one
    allocated beforehand, one sample per round (`settings.bandwidth_rounds`
    of `settings.bandwidth_steps_per_round` copies). Timed in this process
    before and after the backends' processes run, not between their steps:
    the threads of TensorFlow's and XLA's pools keep spinning for a while
    after each op and, on a 2-core machine, slowed a copy timed right after
    a step 4-fold."""
    source = np.random.default_rng(0).standard_normal(tensor_shape(settings)).astype("float32")
    destination = np.empty_like(source)
    benchmarking.seconds_per_step(np.copyto, (destination, source), 1)
    return [benchmarking.seconds_per_step(np.copyto, (destination, source), settings.bandwidth_steps_per_round)
            for _ in range(settings.bandwidth_rounds)]


def copy_bandwidth(shape, seconds):
    """{"copy_ms", "copy_gb_per_s"}: the median copy of `seconds` and its
    bandwidth, a copy moving `COPY_PASSES` passes of the tensor."""
    median = statistics.median(seconds)
    return {"copy_ms": 1e3 * median,
            "copy_gb_per_s": gigabytes_per_second(bytes_moved(shape, passes=COPY_PASSES), median)}


def bandwidth_row(row, copy):
    """`row` (of `measure_in_process`) with the copy's bandwidth and
    normzoo's fraction of it."""
    if "error" in row:
        return row
    return {**row, **copy, "fraction_of_copy_bandwidth": row["normzoo_gb_per_s"] / copy["copy_gb_per_s"]}


def measure_in_process(settings):
    """{mode: row} for the modes of `settings.bandwidth_modes` that run on
    this process's Keras backend: both layers' steps timed in alternating
    rounds, and the "profile" of normzoo's step; a mode that cannot run
    here has an "error"."""
    shape = tensor_shape(settings)
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    modes = [mode for mode in settings.bandwidth_modes if MODES[mode][0] == backends.BACKEND]
    steps, errors = {}, {}
    for mode in modes:
        try:
            for name, batch_norm in BATCH_NORMS.items():
                steps[f"{mode}/{name}"] = make_step(mode, batch_norm(), shape, x, dy)
            benchmarking.wait(steps[f"{mode}/normzoo"][0](*steps[f"{mode}/normzoo"][1]))
        except Exception as error:  # noqa: BLE001 - torch.compile may not work here
            steps = {key: value for key, value in steps.items() if not key.startswith(f"{mode}/")}
            errors[mode] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    times = benchmarking.compare(
        steps, rounds=settings.bandwidth_rounds, steps_per_round=settings.bandwidth_steps_per_round,
        warmup_steps=settings.warmup_steps,
    )
    num_bytes = bytes_moved(shape)
    rows = {}
    for mode in modes:
        row = {"mode": mode, "shape": list(shape), "versions": versions()}
        if mode in errors:
            rows[mode] = {**row, "error": errors[mode]}
            continue
        normzoo, keras_times = times[f"{mode}/normzoo"], times[f"{mode}/keras"]
        paired = [a / b for a, b in zip(normzoo.samples, keras_times.samples, strict=True)]
        row.update(
            normzoo_ms=1e3 * normzoo.median,
            keras_ms=1e3 * keras_times.median,
            ratio=normzoo.median / keras_times.median,
            ratio_range_over_rounds=[min(paired), max(paired)],
            first_call_s={"normzoo": normzoo.first_call, "keras": keras_times.first_call},
            passes=PASSES,
            bytes_moved=num_bytes,
            normzoo_gb_per_s=gigabytes_per_second(num_bytes, normzoo.median),
            keras_gb_per_s=gigabytes_per_second(num_bytes, keras_times.median),
            profile=profile(mode, *steps[f"{mode}/normzoo"]),
        )
        rows[mode] = row
    return rows


def versions():
    """The versions of Keras and of this process's backend framework."""
    framework = {"tensorflow": "tf", "jax": "jax", "torch": "torch"}[backends.BACKEND]
    return {"keras": keras.__version__, backends.BACKEND: globals()[framework].__version__}


def make_step(mode, layer, shape, x, dy):
    """`(function, args)`: one training step of `layer` in `mode` on `x`
    with the output gradient `dy` (NumPy arrays), returning the output and
    the gradients of x, gamma and beta; the layer's moving statistics
    follow each step."""
    layer.build(shape)
    if mode in ("graph", "xla"):
        return _tensorflow_step(layer, mode == "xla"), (tf.constant(x), tf.constant(dy))
    if mode == "jax":
        return _jax_step(layer), (jax.numpy.asarray(x), jax.numpy.asarray(dy))
    inputs = torch.tensor(x, requires_grad=True)
    return _torch_step(layer, compiled=(mode == "torch_compile")), (inputs, torch.tensor(dy))


def _tensorflow_step(layer, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return (y, *tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=dy))

    return step


def _jax_step(layer):
    """A `jax.jit` step of the layer's variables' values, which the
    returned function keeps and updates (as Keras' own JAX trainer does)."""

    @jax.jit
    def step(trainable, non_trainable, x, dy):
        def forward(trainable, x):
            return layer.stateless_call(trainable, non_trainable, x, training=True)

        y, backward, non_trainable = jax.vjp(forward, trainable, x, has_aux=True)
        d_trainable, d_x = backward(dy)
        return (y, d_x, *d_trainable), non_trainable

    state = {
        "trainable": [v.value for v in layer.trainable_variables],
        "non_trainable": [v.value for v in layer.non_trainable_variables],
    }

    def run(x, dy):
        outputs, state["non_trainable"] = step(state["trainable"], state["non_trainable"], x, dy)
        return outputs

    return run


def _torch_step(layer, compiled):
    forward = lambda x: layer(x, training=True)  # noqa: E731
    if compiled:
        forward = torch.compile(forward)
    variables = [layer.gamma.value, layer.beta.value]

    def step(x, dy):
        y = forward(x)
        return (y.detach(), *torch.autograd.grad(y, [x, *variables], dy))

    return step


def profile(mode, function, args):
    """The ops that take the time of `PROFILED_STEPS` calls of
    `function(*args)`: [{"op", "ms_per_step", "share"}] of the `TOP_OPS`
    ops with the most self time (time not spent in a nested op, summed
    over threads), each with its share of all ops' self time."""
    if mode in ("torch", "torch_compile"):
        self_ms = _torch_self_ms(function, args)
    else:
        self_ms = _xplane_self_ms(function, args)
    total = sum(self_ms.values())
    return [
        {"op": op, "ms_per_step": ms / PROFILED_STEPS, "share": ms / total}
        for op, ms in sorted(self_ms.items(), key=lambda item: -item[1])[:TOP_OPS]
    ]


# Host events of TensorFlow's and JAX's runtimes around the ops (running a
# function or an XLA program, dispatching, waiting for threads) and of
# Python functions ("$file:line name"): not ops.
_RUNTIME_EVENTS = ("::", "Execute", "FunctionRun", "EagerCopyToDevice", "BlockUntilReady", "__inference_", "PjitFunction", "$")
# The traced step itself (`_tensorflow_step`'s tf.function, `_jax_step`'s jit).
_STEP_EVENTS = ("step", "jit_step")


def _xplane_self_ms(function, args):
    """{op: self milliseconds} from the XPlane trace of TensorFlow's
    profiler (graph and XLA) or JAX's."""
    directory = tempfile.mkdtemp()
    if backends.TENSORFLOW:
        tf.profiler.experimental.start(directory)
    else:
        jax.profiler.start_trace(directory)
    for _ in range(PROFILED_STEPS):
        benchmarking.wait(function(*args))
    if backends.TENSORFLOW:
        tf.profiler.experimental.stop()
    else:
        jax.profiler.stop_trace()
    self_ps = collections.Counter()
    for path in glob.glob(f"{directory}/**/*.xplane.pb", recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as file:
            space.ParseFromString(file.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:"):
                continue
            names = {key: value.name for key, value in plane.event_metadata.items()}
            for line in plane.lines:
                for name, picoseconds in _self_times(line.events, names):
                    if name not in _STEP_EVENTS and not any(word in name for word in _RUNTIME_EVENTS):
                        self_ps[name] += picoseconds
    return {name: picoseconds / 1e9 for name, picoseconds in self_ps.items()}


def _self_times(events, names):
    """(name, self picoseconds) of each event of one thread's line: its
    duration less that of the events nested in it."""
    spans = sorted(((e.offset_ps, e.offset_ps + e.duration_ps, names.get(e.metadata_id, "?")) for e in events),
                   key=lambda span: (span[0], -span[1]))
    open_spans, result = [], []
    for start, end, name in spans:
        while open_spans and open_spans[-1][1] <= start:
            result.append(tuple(open_spans.pop()[2:]))
        if open_spans:
            open_spans[-1][3] -= end - start
        open_spans.append([start, end, name, end - start])
    result.extend(tuple(span[2:]) for span in open_spans)
    return result


def _torch_self_ms(function, args):
    """{op: self milliseconds} from PyTorch's profiler. A graph that
    torch.compile generated is one op ("Call CompiledFxGraph <hash>")."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(PROFILED_STEPS):
            function(*args)
    return {event.key.strip("# "): event.self_cpu_time_total / 1e3 for event in profiler.key_averages()}


def _where_the_time_goes(row):
    """The profile's top ops, where normzoo's step stays under
    `PROFILE_BELOW` of the copy bandwidth ("" elsewhere)."""
    if row["fraction_of_copy_bandwidth"] >= PROFILE_BELOW:
        return ""
    return ", ".join(f"{op['op']} {100 * op['share']:.0f}%" for op in row["profile"])


def note(m):
    d = m["details"]
    if "xla_ms" in d:
        return f"{d['xla_ms']:.1f} vs {d['graph_ms']:.1f} ms"
    text = (f"{d['normzoo_ms']:.1f} vs {d['keras_ms']:.1f} ms (rounds {d['ratio_range_over_rounds'][0]:.2f}-"
            f"{d['ratio_range_over_rounds'][1]:.2f}); normzoo {d['normzoo_gb_per_s']:.1f} GB/s = "
            f"{100 * d['fraction_of_copy_bandwidth']:.0f}% of the copy's {d['copy_gb_per_s']:.1f} GB/s")
    if d["fraction_of_copy_bandwidth"] < PROFILE_BELOW:
        text += f"; time in: {_where_the_time_goes(d)}"
    return text


def section(record):
    rows = record.get("batch_norm_bandwidth") or []
    if not rows:
        return []
    shape = rows[0]["shape"]
    lines = [
        f"## P13: BatchNorm training forward + backward on a {tuple(shape)} float32 tensor",
        "",
        f"Bytes that must move: {PASSES} passes of the tensor ({FORWARD_PASSES} forward: read x for the moments, "
        f"read x to normalize, write y; {BACKWARD_PASSES} backward: read dy and x for sum(dy) and "
        f"sum(dy * x_hat), read dy and x again, write dx) = {bytes_moved(shape) / 1e6:.1f} MB. "
        "GB/s = those bytes / the median step time; the copy is np.copyto of an array of the tensor's size "
        "into one allocated beforehand (2 passes: read + write), timed before and after the steps. "
        "Where normzoo's step stays under 30% of the copy's bandwidth, the last column has the ops with the "
        "most self time in its profile and their share of all ops' self time.",
        "",
        "| mode | normzoo ms | keras ms | normzoo / keras | normzoo GB/s | keras GB/s | copy GB/s | "
        "normzoo / copy | where normzoo's time goes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {MODES[row['mode']][1]} | failed: {row['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {MODES[row['mode']][1]} | {row['normzoo_ms']:.2f} | {row['keras_ms']:.2f} | {row['ratio']:.3f} | "
            f"{row['normzoo_gb_per_s']:.1f} | {row['keras_gb_per_s']:.1f} | {row['copy_gb_per_s']:.1f} | "
            f"{100 * row['fraction_of_copy_bandwidth']:.0f}% | {_where_the_time_goes(row)} |"
        )
    return lines


FIGURE = Figure("P13", measure, note, section, tables={"batch_norm_bandwidth": []})
