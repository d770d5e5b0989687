"""Measuring speed: step times side by side, FLOP counts, the machine.

    steps = {"a": (step_a, (images, labels)), "b": (step_b, (images, labels))}
    times = benchmarking.compare(steps, rounds=5, steps_per_round=3)
    times["a"].median / times["b"].median

`compare` times candidates in alternating rounds in one process, so that
noise from other work on the machine (or a CPU changing its clock) reaches
every candidate alike; a ratio of its medians is the figure to quote, not an
absolute time. `forward_multiply_adds` counts a model's convolutions and
dense layers from their shapes, `profiled_float_ops` has TensorFlow's
profiler count the same graph, and `matmul_flops_per_second` measures what
this machine's float32 matrix multiply achieves: together they say how much
of the machine a training step uses. `machine` describes what a figure was
measured on. The figures of lab/benchmark.py (`normzoo_lab.benchmarks`)
are built on these.

Steps, timing and `machine` work under Keras' TensorFlow and JAX backends
(under JAX a step is `jax.jit` of Keras' stateless calls, what `Model.fit`
compiles); the FLOP counts of TensorFlow's profiler and its matmul are
TensorFlow's.
"""

import dataclasses
import os
import platform
import statistics
import time

import keras
import numpy as np

from normzoo import backends
from normzoo._keras_graph import call_shapes, leaf_layers

if backends.TENSORFLOW:
    import tensorflow as tf
if backends.BACKEND == "jax":
    import jax

# Environment variables that change how fast TensorFlow runs on a CPU.
SPEED_ENVIRONMENT = (
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_XLA_FLAGS",
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "CUDA_VISIBLE_DEVICES",
)

MODES = ("eager", "graph", "xla")


def wait(result):
    """Blocks until every tensor in the nested `result` is computed."""
    for value in keras.tree.flatten(result):
        if hasattr(value, "block_until_ready"):  # a JAX array
            value.block_until_ready()
        elif hasattr(value, "numpy"):
            value.numpy()
    return result


def seconds_per_step(function, args, steps):
    """Mean wall time of `steps` calls of `function(*args)`, in seconds,
    waiting for the last result."""
    start = time.perf_counter()
    for _ in range(steps):
        result = function(*args)
    wait(result)
    return (time.perf_counter() - start) / steps


@dataclasses.dataclass
class StepTimes:
    """Timings of one candidate of `compare`, in seconds.

    Attributes:
        first_call: the first call (tracing and compiling included).
        samples: seconds per step, one per round.
    """

    first_call: float
    samples: list

    @property
    def median(self):
        return statistics.median(self.samples)


def compare(steps, *, rounds, steps_per_round, warmup_steps=1):
    """Times candidates side by side in alternating rounds.

    Each candidate is called once (timed as `first_call`), then
    `warmup_steps` times; then, in each of `rounds` rounds, every candidate
    runs `steps_per_round` steps, in an order reversed every other round
    (a b, b a, a b, ...) so that neither always follows the other.

    Args:
        steps: {name: (function, args)}.

    Returns:
        {name: StepTimes}, in the order of `steps`.
    """
    first_call = {}
    for name, (function, args) in steps.items():
        start = time.perf_counter()
        wait(function(*args))
        first_call[name] = time.perf_counter() - start
        if warmup_steps:
            seconds_per_step(function, args, warmup_steps)
    samples = {name: [] for name in steps}
    order = list(steps)
    for round_index in range(rounds):
        for name in order if round_index % 2 == 0 else reversed(order):
            function, args = steps[name]
            samples[name].append(seconds_per_step(function, args, steps_per_round))
    return {name: StepTimes(first_call[name], samples[name]) for name in steps}


def ratio(times, numerator, denominator):
    """`times[numerator].median / times[denominator].median`, with the
    spread of the same ratio round by round (the rounds pair up the two):
    `(ratio, lowest round's ratio, highest round's ratio)`."""
    paired = [a / b for a, b in zip(times[numerator].samples, times[denominator].samples, strict=True)]
    return times[numerator].median / times[denominator].median, min(paired), max(paired)


def train_step(model, mode, learning_rate=0.01):
    """One SGD-with-momentum step of `model` on `(images, labels)` with a
    softmax cross-entropy on its logits, returning the loss.

    `mode` is "eager" (the Python function), "graph" (`tf.function`) or
    "xla" (`tf.function(jit_compile=True)`). The same code trains every
    model a benchmark compares. Under JAX the mode is "xla" (`jax.jit`),
    and the step trains a copy of the model's variables (the model's own
    are unchanged).
    """
    _check_mode(mode)
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
    # Creating the optimizer's variables while tracing would make
    # tf.function trace the step twice.
    optimizer.build(model.trainable_variables)
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if not backends.TENSORFLOW:
        return _jax_train_step(model, optimizer, loss_function)

    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_function(labels, model(images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=(mode == "xla"))


def inference_step(model, mode):
    """`model(images, training=False)` as a function of `images`, in
    `mode` (see `train_step`)."""
    _check_mode(mode)
    if not backends.TENSORFLOW:
        variables = [[v.value for v in model.trainable_variables],
                     [v.value for v in model.non_trainable_variables]]
        infer = jax.jit(lambda variables, images: model.stateless_call(*variables, images)[0])
        return lambda images: infer(variables, images)

    def step(images):
        return model(images, training=False)

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=(mode == "xla"))


def _check_mode(mode):
    modes = MODES if backends.TENSORFLOW else ("xla",)
    if mode not in modes:
        raise ValueError(
            f"Unknown mode {mode!r} under Keras' {backends.BACKEND} backend; choose one of "
            f"{', '.join(modes)}."
        )


def _jax_train_step(model, optimizer, loss_function):
    """`train_step` under JAX: one `jax.jit` function of the variables'
    values, which the returned step keeps and updates."""

    def loss(trainable, non_trainable, images, labels):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, images, training=True)
        return loss_function(labels, logits), non_trainable

    gradient = jax.value_and_grad(loss, has_aux=True)

    @jax.jit
    def update(state, images, labels):
        trainable, non_trainable, optimizer_variables = state
        (value, non_trainable), gradients = gradient(trainable, non_trainable, images, labels)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        return value, (trainable, non_trainable, optimizer_variables)

    state = [
        (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )
    ]

    def step(images, labels):
        value, state[0] = update(state[0], images, labels)
        return value

    return step


def conv_net(batch_norm, image_size, num_classes):
    """The small conv net in which batch normalization layers are compared
    (P2, P10, lab/gpu_check.py): four 3x3 convolutions (32, 64, 64, 128
    filters; strides 1, 2, 1, 2), each followed by `batch_norm()` and a
    ReLU, global average pooling and a dense classifier, on `image_size`
    RGB images."""
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for filters, stride in ((32, 1), (64, 2), (64, 1), (128, 2)):
        x = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(x)
        x = batch_norm()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def random_batch(batch_size, image_size, num_classes, seed=0):
    """Standard-normal images and uniform labels, as tensors."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, image_size, image_size, 3)).astype("float32")
    labels = rng.integers(0, num_classes, batch_size)
    return keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)


def forward_multiply_adds(model):
    """Multiply-adds of one example's forward pass through the
    convolutions and dense layers of `model`, counted from their shapes.

    Normalization, activations, additions and pooling are not counted (they
    are a few operations per activation, against hundreds per activation
    for a convolution), which is the convention of the papers' "FLOPs"
    (ResNet-50 at 224x224: about 4.1e9). Training costs about three times
    the forward pass (the backward pass computes gradients of both the
    inputs and the weights).

    Raises:
        ValueError: a layer with a kernel of a kind not counted here, or a
            shape that depends on the input size (build the model with a
            fixed input shape).
    """
    total = 0
    for layer in leaf_layers(model):
        for input_shape, output_shape in call_shapes(layer):
            total += _multiply_adds(layer, input_shape, output_shape)
    return total


def _multiply_adds(layer, input_shape, output_shape):
    def known(shape):
        if any(size is None for size in shape[1:]):
            raise ValueError(
                f"Layer {layer.name!r} has shapes that depend on the input "
                f"({tuple(shape)}); build the model with a fixed input shape."
            )
        return shape

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        output_shape = known(output_shape)
        spatial = np.prod(output_shape[1:-1])
        return int(spatial * np.prod(layer.kernel_size) * output_shape[-1])
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        if layer.data_format != "channels_last":
            raise ValueError(f"Layer {layer.name!r}: only channels_last is counted.")
        input_shape, output_shape = known(input_shape), known(output_shape)
        spatial = np.prod(output_shape[1:-1])
        per_output = np.prod(layer.kernel_size) * input_shape[-1] // layer.groups
        return int(spatial * per_output * layer.filters)
    if isinstance(layer, keras.layers.Dense):
        input_shape = known(input_shape)
        return int(np.prod(input_shape[1:]) * layer.units)
    if any("kernel" in weight.path.rsplit("/", 1)[-1] for weight in layer.weights):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has a kernel but is not a kind "
            "forward_multiply_adds counts (Conv1D/2D/3D, DepthwiseConv2D, Dense)."
        )
    return 0


def profiled_float_ops(model, input_shape, op_types=("Conv2D", "MatMul")):
    """Floating-point operations that TensorFlow's profiler counts in the
    graph of one example's forward pass (`model(x, training=False)`), by op
    type, for the op types in `op_types` (None: all). A multiply-add counts
    as two operations."""
    backends.require_tensorflow("TensorFlow's profiler (profiled_float_ops)")
    function = tf.function(lambda images: model(images, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32))
    profiler = tf.compat.v1.profiler
    options = (
        profiler.ProfileOptionBuilder(profiler.ProfileOptionBuilder.float_operation())
        .with_empty_output()
        .build()
    )
    profile = profiler.profile(graph=concrete.graph, cmd="op", options=options)
    counts = {}
    nodes = list(profile.children)
    while nodes:  # the op view nests each op type under the one before it
        node = nodes.pop()
        if op_types is None or node.name in op_types:
            counts[node.name] = node.float_ops
        nodes.extend(node.children)
    return counts


def matmul_flops_per_second(size=2048, chain=4, trials=5):
    """The float32 FLOP/s of this machine's matrix multiply: the best of
    `trials` runs of a `tf.function` multiplying `chain` times by a
    `size` x `size` matrix (2 * size**3 operations each)."""
    backends.require_tensorflow("matmul_flops_per_second")
    rng = np.random.default_rng(0)
    matrix = tf.constant((rng.standard_normal((size, size)) / np.sqrt(size)).astype("float32"))
    start_value = tf.constant(rng.standard_normal((size, size)).astype("float32"))

    @tf.function
    def multiply(x):
        for _ in range(chain):
            x = tf.matmul(x, matrix)
        return x

    wait(multiply(start_value))
    best = min(seconds_per_step(multiply, (start_value,), 1) for _ in range(trials))
    return 2 * size**3 * chain / best


@dataclasses.dataclass
class LinearFit:
    """`y = intercept + slope * x` by least squares."""

    intercept: float
    slope: float
    r_squared: float
    residuals: list


def linear_fit(x, y):
    """Least-squares line through the points (x, y)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    design = np.stack([np.ones_like(x), x], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - (intercept + slope * x)
    total = np.sum((y - y.mean()) ** 2)
    r_squared = 1.0 - np.sum(residuals**2) / total if total > 0 else 1.0
    return LinearFit(float(intercept), float(slope), float(r_squared), residuals.tolist())


def machine():
    """What a measurement ran on: CPU, cores, memory, versions, the
    environment variables of `SPEED_ENVIRONMENT` and the load average (the
    machine may be shared)."""
    cpuinfo = _read("/proc/cpuinfo")
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    meminfo = _read("/proc/meminfo")
    memory_kib = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0
    )
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_mhz": fields.get("cpu MHz"),
        "vector_extensions": sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(memory_kib / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras_backend": backends.BACKEND,
        "tensorflow": tf.__version__ if backends.TENSORFLOW else None,
        "jax": jax.__version__ if backends.BACKEND == "jax" else None,
        "keras": keras.__version__,
        "gpus": _gpus(),
        "environment": {name: os.environ.get(name, "(unset)") for name in SPEED_ENVIRONMENT},
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def _gpus():
    if backends.TENSORFLOW:
        return [device.name for device in tf.config.list_physical_devices("GPU")]
    if backends.BACKEND == "jax":
        return [str(device) for device in jax.devices() if device.platform == "gpu"]
    return []


def _read(path):
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return ""
