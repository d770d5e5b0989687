"""A one-shot check of normzoo on a GPU under Keras' JAX or PyTorch
backend, without TensorFlow: what lab/gpu_check.py runs and writes as one
JSON.

    record = gpu_check.run(gpu_check.FULL)   # a few minutes on one GPU
    record = gpu_check.run(gpu_check.TINY)   # about a minute on a CPU (tests)

Four parts, each a plain record:

- `numerics`: BatchNorm (training and inference, the moving statistics,
  the gradients; also at mean 1e4 / std 1e-2), LayerNorm and SkipInit, in
  float32 and under the mixed_bfloat16 policy, against NumPy float64 on
  the same (rounded) inputs, each with its tolerance and whether it
  passed;
- `batch_norm_step`: normzoo's BatchNorm against
  `keras.layers.BatchNormalization` in the conv net of benchmark P2,
  training step time (`benchmarking.compare`, alternating rounds);
- `training`: images per second of a training step of WRN-16-4 (FULL) at
  batch 128 on synthetic 32x32 images, with batch, layer and skipinit
  norms (batch also under mixed_bfloat16);
- `fold`: the inference speed-up of `bn.fold` on ResNet-50 at batch 64,
  with the largest difference of the outputs.

How a step runs (the record's `compilation`): under JAX every call is
`jax.jit` of Keras' stateless calls and a timing waits with
`block_until_ready`; under PyTorch it is Keras' eager step (what
`Model.fit` runs without `jit_compile`: forward, `loss.backward()`, the
optimizer's `apply`) and a timing ends with `torch.cuda.synchronize()`
where the tensors are on a GPU. `run(..., torch_compile=True)` adds
`training_compiled`: the batch-norm WRN step under `torch.compile`, as
Keras' `jit_compile=True` compiles it (or the error, where it fails).

Everything runs on the device Keras puts its tensors on (JAX's default
device; under PyTorch `cuda` where there is one): `tensor_device` names
it, `devices` lists the framework's devices, `backend` and
`framework_version` say which road ran.
"""

import dataclasses
import time

import keras
import numpy as np

from normzoo import backends, bn, models
from normzoo_lab import benchmarking
from normzoo.layers import BatchNorm, LayerNorm, SkipInit

# The Keras backends the check runs on; TensorFlow is not one of them (the
# GPU machine has none).
BACKENDS = ("jax", "torch")
if backends.BACKEND == "jax":
    import jax
    import jax.numpy as jnp
elif backends.BACKEND == "torch":
    import torch

NUM_CLASSES = 10
EPSILON = 1e-3
POLICIES = ("float32", "mixed_bfloat16")
# The output's rounding to the compute dtype: half an ulp, relative.
ROUNDING = {"float32": 2.0**-20, "mixed_bfloat16": 2.0**-8}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each part of the check is."""

    numerics_shape: tuple
    conv_net_batch_size: int
    conv_net_image_size: int
    rounds: int
    steps_per_round: int
    training_model: str
    training_batch_size: int
    training_image_size: int
    training_steps: int
    fold_model: dict
    fold_batch_size: int


FULL = Sizes(
    numerics_shape=(64, 16, 16, 32),
    conv_net_batch_size=128,
    conv_net_image_size=32,
    rounds=11,
    steps_per_round=20,
    training_model="wrn_16_4",
    training_batch_size=128,
    training_image_size=32,
    training_steps=50,
    fold_model={"name": "resnet50", "input_shape": (224, 224, 3)},
    fold_batch_size=64,
)
TINY = Sizes(
    numerics_shape=(8, 4, 4, 3),
    conv_net_batch_size=4,
    conv_net_image_size=8,
    rounds=1,
    steps_per_round=1,
    training_model="wrn_10_1",
    training_batch_size=4,
    training_image_size=8,
    training_steps=2,
    fold_model={"name": "resnet50", "input_shape": (32, 32, 3), "width": 8},
    fold_batch_size=2,
)


def unsupported_backend_message(backend):
    """What the check says under any backend but those of `BACKENDS`."""
    return (
        f"The GPU check runs under Keras' JAX or PyTorch backend: set KERAS_BACKEND=jax or "
        f"KERAS_BACKEND=torch (this process has {backend!r})."
    )


def run(sizes, *, torch_compile=False):
    """The whole check: {"backend", "framework_version", "compilation",
    "devices", "tensor_device", "machine", "sizes", "numerics",
    "batch_norm_step", "training", "fold", "part_seconds", "seconds",
    "passed"}, and "training_compiled" with `torch_compile` (PyTorch only)."""
    if backends.BACKEND not in BACKENDS:
        raise RuntimeError(unsupported_backend_message(backends.BACKEND))
    if torch_compile and backends.BACKEND != "torch":
        raise ValueError("torch_compile=True needs Keras' PyTorch backend (KERAS_BACKEND=torch).")
    start = time.perf_counter()
    record = {"backend": backends.BACKEND, **_framework(), "machine": benchmarking.machine(),
              "sizes": dataclasses.asdict(sizes)}
    if backends.BACKEND == "torch":  # benchmarking.machine() knows JAX's GPUs, not torch's
        record["machine"]["gpus"] = [name for name in record["devices"] if name != "cpu"]
    parts = [("numerics", numerics), ("batch_norm_step", batch_norm_step), ("training", training),
             ("fold", fold)]
    if torch_compile:
        parts.append(("training_compiled", training_compiled))
    record["part_seconds"] = {}
    for name, part in parts:
        part_start = time.perf_counter()
        record[name] = part(sizes)
        record["part_seconds"][name] = time.perf_counter() - part_start
    record["seconds"] = time.perf_counter() - start
    record["passed"] = all(check["passed"] for check in record["numerics"])
    return record


# The two roads -------------------------------------------------------------


def _framework():
    """The framework's version, its devices and where Keras puts a tensor."""
    tensor = keras.ops.convert_to_tensor(np.zeros(1, "float32"))
    if backends.BACKEND == "jax":
        return {"framework_version": jax.__version__, "compilation": "jax.jit",
                "devices": [str(device) for device in jax.devices()],
                "device_kinds": [device.device_kind for device in jax.devices()],  # the GPU's model
                "tensor_device": str(next(iter(tensor.devices())))}
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"framework_version": torch.__version__, "compilation": "eager",
            "cuda": torch.version.cuda, "devices": gpus or ["cpu"], "tensor_device": str(tensor.device),
            # TF32 on a GPU: PyTorch's defaults allow it in convolutions, not in matmuls.
            "allow_tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                           "matmul": torch.backends.cuda.matmul.allow_tf32}}


def _compiled(function):
    """`jax.jit(function)` under JAX; `function` itself (eager) under PyTorch."""
    return jax.jit(function) if backends.BACKEND == "jax" else function


def _numpy(value):
    """A tensor of either backend (on any device, bfloat16 too) as float64."""
    return np.asarray(keras.ops.convert_to_numpy(value), np.float64)


class _TorchResult:
    """A PyTorch step's result, which `benchmarking.wait` waits for as for a
    JAX array: its `block_until_ready` calls `torch.cuda.synchronize()`
    where the tensor is on a GPU (CPU work is done when a call returns)."""

    def __init__(self, tensor):
        self.tensor = tensor.detach()

    def block_until_ready(self):
        if self.tensor.is_cuda:
            torch.cuda.synchronize(self.tensor.device)
        return self

    def __float__(self):
        return float(self.tensor)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(keras.ops.convert_to_numpy(self.tensor), dtype)


def _train_step(model, *, compile_with_torch=False):
    """One SGD-with-momentum step of `model` on (images, labels), returning
    the loss: `benchmarking.train_step` (jax.jit) under JAX; under PyTorch
    the step of Keras' torch trainer, eager or under `torch.compile`."""
    if backends.BACKEND == "jax":
        return benchmarking.train_step(model, "xla")
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)  # benchmarking.train_step's
    optimizer.build(model.trainable_variables)
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    def step(images, labels):
        logits = model(images, training=True)
        model.zero_grad()
        loss = loss_function(labels, logits)
        loss.backward()
        with torch.no_grad():
            optimizer.apply([variable.value.grad for variable in variables], variables)
        return loss

    if compile_with_torch:
        step = torch.compile(step, backend="inductor")  # as Keras' jit_compile=True
    return lambda images, labels: _TorchResult(step(images, labels))


def _inference_step(model):
    """`model(images, training=False)` as a function of `images`."""
    if backends.BACKEND == "jax":
        return benchmarking.inference_step(model, "xla")

    def step(images):
        with torch.no_grad():
            return _TorchResult(model(images, training=False))

    return step


def _gradients(layer, x, upstream):
    """Gradients of sum(upstream * layer(x, training=True)) w.r.t. x and
    the trainable variables: `jax.grad` under jit, or torch's autograd."""
    non_trainable = [v.value for v in layer.non_trainable_variables]
    if backends.BACKEND == "jax":

        def loss(x, trainable):
            outputs, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
            return jnp.sum(outputs.astype("float32") * upstream)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(
            x, [v.value for v in layer.trainable_variables])
    x = x.detach().clone().requires_grad_(True)
    trainable = [v.value.detach().clone().requires_grad_(True) for v in layer.trainable_variables]
    outputs, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
    loss = torch.sum(outputs.float() * keras.ops.convert_to_tensor(upstream))
    d_x, *d_trainable = torch.autograd.grad(loss, [x, *trainable])
    return d_x, d_trainable


# Numerics -----------------------------------------------------------------


def _check(name, policy, got, expected, tolerance):
    """A record of `got` (any dtype) against the float64 `expected`: the
    largest error relative to `expected`'s largest magnitude."""
    got = _numpy(got)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    error = float(np.max(np.abs(got - expected))) / scale
    passed = bool(np.isfinite(got).all() and error <= tolerance)
    return {"name": name, "policy": policy, "relative_error": error, "tolerance": tolerance,
            "passed": passed}


def _training_call(layer, x):
    """(outputs, updated non-trainable values) of layer(x, training=True)."""
    call = _compiled(lambda t, n, x: layer.stateless_call(t, n, x, training=True))
    return call([v.value for v in layer.trainable_variables],
                [v.value for v in layer.non_trainable_variables], x)


def _normalized(x, axes, epsilon):
    mean, variance = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon), mean, variance


def _batch_norm_gradients(x, gamma, upstream, epsilon):
    """Float64 gradients of sum(upstream * BN(x)) (Ioffe & Szegedy 2015,
    section 3) w.r.t. x, gamma and beta, features on the last axis."""
    axes = tuple(range(x.ndim - 1))
    normalized, _, variance = _normalized(x, axes, epsilon)
    d_normalized = upstream * gamma
    d_x = (d_normalized - d_normalized.mean(axes, keepdims=True)
           - normalized * (d_normalized * normalized).mean(axes, keepdims=True)) / np.sqrt(variance + epsilon)
    return d_x, (upstream * normalized).sum(axes), upstream.sum(axes)


def numerics(sizes):
    rng = np.random.default_rng(0)
    shape = sizes.numerics_shape
    axes = tuple(range(len(shape) - 1))
    checks = []
    inputs = {"mean 1.5, std 2": rng.normal(1.5, 2.0, shape),
              "mean 1e4, std 1e-2": 1e4 + 1e-2 * rng.normal(size=shape)}
    gamma = rng.uniform(0.5, 2.0, shape[-1])
    beta = rng.normal(size=shape[-1])
    upstream = rng.normal(size=shape).astype("float32")
    for policy in POLICIES:
        compute_dtype = keras.DTypePolicy(policy).compute_dtype
        for description, values in inputs.items():
            if policy != "float32" and "1e4" in description:
                continue  # bfloat16 cannot hold a std of 1e-2 around 1e4
            x = keras.ops.convert_to_tensor(values, compute_dtype)
            x64 = _numpy(x)
            layer = BatchNorm(dtype=policy, momentum=0.0)
            layer.build(shape)
            layer.gamma.assign(gamma.astype("float32"))
            layer.beta.assign(beta.astype("float32"))
            outputs, statistics = _training_call(layer, x)
            normalized, mean, variance = _normalized(x64, axes, EPSILON)
            tolerance = ROUNDING[policy] + 1e-5
            name = f"BatchNorm training, {description}"
            checks.append(_check(f"{name}: outputs", policy, outputs, gamma * normalized + beta, tolerance))
            moving = dict(zip([v.name for v in layer.non_trainable_variables], statistics))
            checks.append(_check(f"{name}: moving variance", policy, moving["moving_variance"],
                                 variance.reshape(-1), 1e-3 if "1e4" in description else 1e-5))
            for variable, value in zip(layer.non_trainable_variables, statistics):
                variable.assign(value)
            inference = _compiled(lambda v, x: layer.stateless_call(*v, x)[0])(
                [[v.value for v in layer.trainable_variables],
                 [v.value for v in layer.non_trainable_variables]], x)
            moving_mean = _numpy(layer.moving_mean.value)
            moving_variance = _numpy(layer.moving_variance.value)
            expected = gamma * (x64 - moving_mean) / np.sqrt(moving_variance + EPSILON) + beta
            checks.append(_check(f"BatchNorm inference, {description}", policy, inference, expected,
                                 tolerance))
            if policy == "float32":
                got = _gradients(layer, x, upstream)
                expected = _batch_norm_gradients(x64, gamma, upstream.astype(np.float64), EPSILON)
                d_x, (d_gamma, d_beta) = got
                for part, g, e in zip(("x", "gamma", "beta"), (d_x, d_gamma, d_beta), expected):
                    checks.append(_check(f"BatchNorm gradient of {part}, {description}", policy, g, e,
                                         1e-4))
        x = keras.ops.convert_to_tensor(inputs["mean 1.5, std 2"], compute_dtype)
        x64 = _numpy(x)
        norm = LayerNorm(dtype=policy, axis=(1, 2, 3), param_axis=-1)
        norm.build(shape)
        norm.gamma.assign(gamma.astype("float32"))
        norm.beta.assign(beta.astype("float32"))
        outputs = _compiled(lambda v, x: norm.stateless_call(v, [], x)[0])(
            [v.value for v in norm.trainable_variables], x)
        expected = gamma * _normalized(x64, (1, 2, 3), norm.epsilon)[0] + beta
        checks.append(_check("LayerNorm per image", policy, outputs, expected, ROUNDING[policy] + 1e-5))
        skip = SkipInit(initial_alpha=0.37, dtype=policy)
        skip.build(shape)
        outputs = _compiled(lambda v, x: skip.stateless_call(v, [], x)[0])(
            [v.value for v in skip.trainable_variables], x)
        # alpha is float32 and used in the compute dtype, as Keras' autocast does.
        alpha = np.float64(np.float32(0.37).astype(compute_dtype))
        checks.append(_check("SkipInit", policy, outputs, alpha * x64, ROUNDING[policy] + 1e-7))
    return checks


# Speed --------------------------------------------------------------------


def batch_norm_step(sizes):
    """normzoo's BatchNorm / Keras' in benchmark P2's conv net."""
    images, labels = benchmarking.random_batch(
        sizes.conv_net_batch_size, sizes.conv_net_image_size, NUM_CLASSES)
    steps = {}
    for name, layer in (("normzoo", BatchNorm), ("keras", keras.layers.BatchNormalization)):
        keras.utils.set_random_seed(0)
        model = benchmarking.conv_net(layer, sizes.conv_net_image_size, NUM_CLASSES)
        steps[name] = (_train_step(model), (images, labels))
    times = benchmarking.compare(steps, rounds=sizes.rounds, steps_per_round=sizes.steps_per_round)
    ratio, lowest, highest = benchmarking.ratio(times, "normzoo", "keras")
    return {"ratio": ratio, "target": "<= 1.05", "ratio_range_over_rounds": [lowest, highest],
            "normzoo_step_ms": 1e3 * times["normzoo"].median,
            "keras_step_ms": 1e3 * times["keras"].median,
            "first_call_s": {name: t.first_call for name, t in times.items()}}


def _training_record(sizes, norm, policy, **step_options):
    """Images per second of `sizes.training_model`'s training step with
    `norm` under `policy`."""
    images, labels = benchmarking.random_batch(
        sizes.training_batch_size, sizes.training_image_size, NUM_CLASSES)
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = models.build(sizes.training_model, norm=norm, num_classes=NUM_CLASSES,
                             input_shape=(sizes.training_image_size,) * 2 + (3,))
        step = _train_step(model, **step_options)
        start = time.perf_counter()
        first_loss = float(benchmarking.wait(step(images, labels)))
        compile_seconds = time.perf_counter() - start
        seconds = benchmarking.seconds_per_step(step, (images, labels), sizes.training_steps)
        last_loss = float(step(images, labels))
    finally:
        keras.config.set_dtype_policy("float32")
    return {
        "model": sizes.training_model, "norm": norm, "policy": policy,
        "batch_size": sizes.training_batch_size, "image_size": sizes.training_image_size,
        "images_per_second": sizes.training_batch_size / seconds,
        "step_ms": 1e3 * seconds, "first_call_s": compile_seconds,
        "loss_first_step": first_loss, "loss_after": last_loss,
    }


def training(sizes):
    """Images per second of a training step, per norm (and for batch norm
    also under mixed_bfloat16)."""
    return [_training_record(sizes, norm, policy)
            for norm, policy in (("batch", "float32"), ("layer", "float32"), ("skipinit", "float32"),
                                 ("batch", "mixed_bfloat16"))]


def training_compiled(sizes):
    """The batch-norm training step under `torch.compile` (PyTorch only):
    its record, or {"error": ...} where torch.compile fails."""
    try:
        return {"compilation": "torch.compile",
                **_training_record(sizes, "batch", "float32", compile_with_torch=True)}
    except Exception as error:  # noqa: BLE001 (optional: recorded, the check goes on)
        return {"compilation": "torch.compile", "error": f"{type(error).__name__}: {error}"[:2000]}


def fold(sizes):
    """ResNet-50 inference, unfolded / folded with `bn.fold`."""
    arguments = dict(sizes.fold_model)
    name = arguments.pop("name")
    keras.utils.set_random_seed(0)
    model = models.build(name, **arguments)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # statistics that are not the identity
        if isinstance(layer, BatchNorm):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype("float32"))
    folded = bn.fold(model)
    images, _ = benchmarking.random_batch(sizes.fold_batch_size, arguments["input_shape"][0], NUM_CLASSES)
    steps = {"unfolded": (_inference_step(model), (images,)),
             "folded": (_inference_step(folded), (images,))}
    outputs = {name: _numpy(benchmarking.wait(step(*args))) for name, (step, args) in steps.items()}
    times = benchmarking.compare(steps, rounds=sizes.rounds, steps_per_round=2 * sizes.steps_per_round)
    speedup, lowest, highest = benchmarking.ratio(times, "unfolded", "folded")
    return {"model": name, "batch_size": sizes.fold_batch_size, "speedup": speedup,
            "speedup_range_over_rounds": [lowest, highest],
            "unfolded_ms": 1e3 * times["unfolded"].median, "folded_ms": 1e3 * times["folded"].median,
            "max_abs_output_difference": float(np.max(np.abs(outputs["folded"] - outputs["unfolded"]))),
            "max_abs_output": float(np.max(np.abs(outputs["unfolded"])))}
