"""A one-shot check of normzoo on a GPU under Keras' JAX backend, without
TensorFlow: what lab/gpu_check.py runs and writes as one JSON.

    record = gpu_check.run(gpu_check.FULL)   # about 5 minutes on one GPU
    record = gpu_check.run(gpu_check.TINY)   # seconds on a CPU (tests)

Four parts, each a plain record:

- `numerics`: BatchNorm (training and inference, the moving statistics,
  the gradients; also at mean 1e4 / std 1e-2), LayerNorm and SkipInit
  under `jax.jit`, in float32 and under the mixed_bfloat16 policy, against
  NumPy float64 on the same (rounded) inputs, each with its tolerance and
  whether it passed;
- `batch_norm_step`: normzoo's BatchNorm against
  `keras.layers.BatchNormalization` in the conv net of benchmark P2,
  training step time under jit (`benchmarking.compare`, alternating rounds);
- `training`: images per second of a jit-compiled training step of
  WRN-16-4 (FULL) at batch 128 on synthetic 32x32 images, with batch,
  layer and skipinit norms (batch also under mixed_bfloat16);
- `fold`: the inference speed-up of `bn.fold` on ResNet-50 at batch 64,
  with the largest difference of the outputs.

Everything runs on the process's default JAX device (the GPU where there
is one); `machine` names it.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import keras
import numpy as np

from normzoo import backends, bn, models
from normzoo_lab import benchmarking
from normzoo.layers import BatchNorm, LayerNorm, SkipInit

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


def run(sizes):
    """The whole check: {"machine", "sizes", "numerics", "batch_norm_step",
    "training", "fold", "seconds", "passed"}."""
    if backends.BACKEND != "jax":
        raise RuntimeError(
            f"The GPU check runs under Keras' JAX backend; this process runs {backends.BACKEND!r}. "
            "Run it with KERAS_BACKEND=jax."
        )
    start = time.perf_counter()
    record = {"machine": benchmarking.machine(), "devices": [str(d) for d in jax.devices()],
              "sizes": dataclasses.asdict(sizes)}
    record["numerics"] = numerics(sizes)
    record["batch_norm_step"] = batch_norm_step(sizes)
    record["training"] = training(sizes)
    record["fold"] = fold(sizes)
    record["seconds"] = time.perf_counter() - start
    record["passed"] = all(check["passed"] for check in record["numerics"])
    return record


# Numerics -----------------------------------------------------------------


def _check(name, policy, got, expected, tolerance):
    """A record of `got` (any dtype) against the float64 `expected`: the
    largest error relative to `expected`'s largest magnitude."""
    got = np.asarray(got, np.float64)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    error = float(np.max(np.abs(got - expected))) / scale
    passed = bool(np.isfinite(got).all() and error <= tolerance)
    return {"name": name, "policy": policy, "relative_error": error, "tolerance": tolerance,
            "passed": passed}


def _jit_training(layer, x):
    """(outputs, updated non-trainable values) of layer(x, training=True)
    under jax.jit."""
    call = jax.jit(lambda t, n, x: layer.stateless_call(t, n, x, training=True))
    return call([v.value for v in layer.trainable_variables],
                [v.value for v in layer.non_trainable_variables], x)


def _jit_gradients(layer, x, upstream):
    """Gradients of sum(upstream * layer(x, training=True)) w.r.t. x and
    the trainable variables, under jax.jit."""

    def loss(x, trainable):
        outputs, _ = layer.stateless_call(
            trainable, [v.value for v in layer.non_trainable_variables], x, training=True)
        return jnp.sum(outputs.astype("float32") * upstream)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, [v.value for v in layer.trainable_variables])


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
            x = values.astype(compute_dtype)
            x64 = np.asarray(x, np.float64)
            layer = BatchNorm(dtype=policy, momentum=0.0)
            layer.build(shape)
            layer.gamma.assign(gamma.astype("float32"))
            layer.beta.assign(beta.astype("float32"))
            outputs, statistics = _jit_training(layer, x)
            normalized, mean, variance = _normalized(x64, axes, EPSILON)
            tolerance = ROUNDING[policy] + 1e-5
            name = f"BatchNorm training, {description}"
            checks.append(_check(f"{name}: outputs", policy, outputs, gamma * normalized + beta, tolerance))
            moving = dict(zip([v.name for v in layer.non_trainable_variables], statistics))
            checks.append(_check(f"{name}: moving variance", policy, moving["moving_variance"],
                                 variance.reshape(-1), 1e-3 if "1e4" in description else 1e-5))
            for variable, value in zip(layer.non_trainable_variables, statistics):
                variable.assign(value)
            inference = jax.jit(lambda v, x: layer.stateless_call(*v, x)[0])(
                [[v.value for v in layer.trainable_variables],
                 [v.value for v in layer.non_trainable_variables]], x)
            moving_mean = np.asarray(layer.moving_mean.value, np.float64)
            moving_variance = np.asarray(layer.moving_variance.value, np.float64)
            expected = gamma * (x64 - moving_mean) / np.sqrt(moving_variance + EPSILON) + beta
            checks.append(_check(f"BatchNorm inference, {description}", policy, inference, expected,
                                 tolerance))
            if policy == "float32":
                got = _jit_gradients(layer, x, upstream)
                expected = _batch_norm_gradients(x64, gamma, upstream.astype(np.float64), EPSILON)
                d_x, (d_gamma, d_beta) = got
                for part, g, e in zip(("x", "gamma", "beta"), (d_x, d_gamma, d_beta), expected):
                    checks.append(_check(f"BatchNorm gradient of {part}, {description}", policy, g, e,
                                         1e-4))
        x = inputs["mean 1.5, std 2"].astype(compute_dtype)
        x64 = np.asarray(x, np.float64)
        norm = LayerNorm(dtype=policy, axis=(1, 2, 3), param_axis=-1)
        norm.build(shape)
        norm.gamma.assign(gamma.astype("float32"))
        norm.beta.assign(beta.astype("float32"))
        outputs = jax.jit(lambda v, x: norm.stateless_call(v, [], x)[0])(
            [v.value for v in norm.trainable_variables], x)
        expected = gamma * _normalized(x64, (1, 2, 3), norm.epsilon)[0] + beta
        checks.append(_check("LayerNorm per image", policy, outputs, expected, ROUNDING[policy] + 1e-5))
        skip = SkipInit(initial_alpha=0.37, dtype=policy)
        skip.build(shape)
        outputs = jax.jit(lambda v, x: skip.stateless_call(v, [], x)[0])(
            [v.value for v in skip.trainable_variables], x)
        # alpha is float32 and used in the compute dtype, as Keras' autocast does.
        alpha = np.float64(np.float32(0.37).astype(compute_dtype))
        checks.append(_check("SkipInit", policy, outputs, alpha * x64, ROUNDING[policy] + 1e-7))
    return checks


# Speed --------------------------------------------------------------------


def batch_norm_step(sizes):
    """normzoo's BatchNorm / Keras' in benchmark P2's conv net, under jit."""
    images, labels = benchmarking.random_batch(
        sizes.conv_net_batch_size, sizes.conv_net_image_size, NUM_CLASSES)
    steps = {}
    for name, layer in (("normzoo", BatchNorm), ("keras", keras.layers.BatchNormalization)):
        keras.utils.set_random_seed(0)
        model = benchmarking.conv_net(layer, sizes.conv_net_image_size, NUM_CLASSES)
        steps[name] = (benchmarking.train_step(model, "xla"), (images, labels))
    times = benchmarking.compare(steps, rounds=sizes.rounds, steps_per_round=sizes.steps_per_round)
    ratio, lowest, highest = benchmarking.ratio(times, "normzoo", "keras")
    return {"ratio": ratio, "target": "<= 1.05", "ratio_range_over_rounds": [lowest, highest],
            "normzoo_step_ms": 1e3 * times["normzoo"].median,
            "keras_step_ms": 1e3 * times["keras"].median,
            "first_call_s": {name: t.first_call for name, t in times.items()}}


def training(sizes):
    """Images per second of a jit-compiled training step, per norm (and
    for batch norm also under mixed_bfloat16)."""
    images, labels = benchmarking.random_batch(
        sizes.training_batch_size, sizes.training_image_size, NUM_CLASSES)
    records = []
    for norm, policy in (("batch", "float32"), ("layer", "float32"), ("skipinit", "float32"),
                         ("batch", "mixed_bfloat16")):
        keras.config.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            model = models.build(sizes.training_model, norm=norm, num_classes=NUM_CLASSES,
                                 input_shape=(sizes.training_image_size,) * 2 + (3,))
            step = benchmarking.train_step(model, "xla")
            start = time.perf_counter()
            first_loss = float(benchmarking.wait(step(images, labels)))
            compile_seconds = time.perf_counter() - start
            seconds = benchmarking.seconds_per_step(step, (images, labels), sizes.training_steps)
            last_loss = float(step(images, labels))
        finally:
            keras.config.set_dtype_policy("float32")
        records.append({
            "model": sizes.training_model, "norm": norm, "policy": policy,
            "batch_size": sizes.training_batch_size, "image_size": sizes.training_image_size,
            "images_per_second": sizes.training_batch_size / seconds,
            "step_ms": 1e3 * seconds, "first_call_s": compile_seconds,
            "loss_first_step": first_loss, "loss_after": last_loss,
        })
    return records


def fold(sizes):
    """ResNet-50 inference, unfolded / folded with `bn.fold`, under jit."""
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
    steps = {"unfolded": (benchmarking.inference_step(model, "xla"), (images,)),
             "folded": (benchmarking.inference_step(folded, "xla"), (images,))}
    outputs = {name: np.asarray(benchmarking.wait(step(*args))) for name, (step, args) in steps.items()}
    times = benchmarking.compare(steps, rounds=sizes.rounds, steps_per_round=2 * sizes.steps_per_round)
    speedup, lowest, highest = benchmarking.ratio(times, "unfolded", "folded")
    return {"model": name, "batch_size": sizes.fold_batch_size, "speedup": speedup,
            "speedup_range_over_rounds": [lowest, highest],
            "unfolded_ms": 1e3 * times["unfolded"].median, "folded_ms": 1e3 * times["folded"].median,
            "max_abs_output_difference": float(np.max(np.abs(outputs["folded"] - outputs["unfolded"]))),
            "max_abs_output": float(np.max(np.abs(outputs["unfolded"])))}
