"""Benchmarks normzoo against Keras and against this machine's limits (issue 6).

One run measures every figure, prints a table and writes BENCHMARKS.md and
benchmark.json (the numbers, the flags and the machine) to --output_dir:

  P1  ResNet-50 training images/s, normzoo (keras.applications layout) /
      keras.applications.ResNet50, same batch, same step code, tf.function
      with and without jit_compile                               target >= 1.0
  P2  normzoo BatchNorm / keras BatchNormalization step time in a small
      conv net (scripts/benchmark_layers.py), eager, graph, XLA   target <= 1.05
  P3  inference speed-up of normzoo.bn.fold on the P1 ResNet-50  target >= 1.3
  P4  step time with synchronized / unsynchronized BatchNorm on 2 replicas
      (MirroredStrategy over 2 logical CPU devices, in a subprocess, since
      logical devices must be set before TensorFlow starts)      target <= 1.15
  P5  restore of a ResNet-50 .weights.h5 with full verification (every
      variable checked, every tensor's sha256; also timed: the same
      restore of a Keras-written file, which has no checksums)  target < 2 s
      and the build time of WRN-1000-2                          target < 30 s
  P6  achieved training FLOP/s of P1 / this machine's float32
      matmul FLOP/s                                              target >= 40%
  P7  training step time and XLA compile time of WRN-n-2 against the number
      of residual blocks: least-squares line, R^2, residuals     target R^2 >= 0.95

Ratios come from candidates timed in alternating rounds in the same process
(`normzoo.benchmarking.compare`), so machine noise reaches both alike. With
--compare_onednn, ResNet-50 training is also timed with TF_ENABLE_ONEDNN_OPTS=0
and =1 in alternating subprocesses, with the numerical difference.

    python scripts/benchmark.py                    # the full run
    python scripts/benchmark.py --quick            # tiny sizes, under a minute
    python scripts/benchmark.py --figures=P1,P6 --resnet_image_size=224
"""

import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import _app  # scripts/_app.py

FIGURES = ("P1", "P2", "P3", "P4", "P5", "P6", "P7")

flags.DEFINE_bool("quick", False, "Tiny sizes and few steps (for tests): the figures are not meaningful.")
flags.DEFINE_list("figures", list(FIGURES), "Figures to measure.")
flags.DEFINE_string(
    "output_dir",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    "Where BENCHMARKS.md and benchmark.json are written.",
)
flags.DEFINE_integer("rounds", 5, "Alternating timing rounds (P1, P3, P4).")
flags.DEFINE_integer("warmup_steps", 1, "Untimed steps after the first call, before timing.")
flags.DEFINE_integer("steps_per_round", 2, "Steps timed per round (P1, P3, P4, P7).")
flags.DEFINE_integer("resnet_batch_size", 8, "Batch of the ResNet-50 figures (P1, P3, P6).")
flags.DEFINE_integer("resnet_image_size", 128, "Image size of the ResNet-50 figures (P1, P3, P6).")
flags.DEFINE_list("resnet_modes", ["graph", "xla"], "Modes of P1 and P3: eager, graph (tf.function), xla.")
flags.DEFINE_integer("layers_batch_size", 32, "Batch of the conv net of P2.")
flags.DEFINE_integer("layers_image_size", 32, "Image size of the conv net of P2.")
flags.DEFINE_list("layers_modes", ["eager", "graph", "xla"], "Modes of P2.")
flags.DEFINE_integer("layers_rounds", 11, "Alternating timing rounds of P2.")
flags.DEFINE_integer("layers_steps_per_round", 10, "Steps timed per round in P2.")
flags.DEFINE_string("sync_bn_model", "resnet20", "Model of P4.")
flags.DEFINE_integer("sync_bn_batch_size", 64, "Global batch of P4 (split over 2 replicas).")
flags.DEFINE_integer("sync_bn_image_size", 32, "Image size of P4.")
flags.DEFINE_integer("sync_bn_steps_per_round", 5, "Steps timed per round in P4.")
flags.DEFINE_string("build_model", "wrn_1000_2", "Model whose build time P5 measures.")
flags.DEFINE_list("wrn_depths", ["16", "40", "100", "400"], "Depths n of the WRN-n-2 of P7 (1000 is valid too).")
flags.DEFINE_integer("wrn_batch_size", 8, "Batch of P7.")
flags.DEFINE_integer("wrn_image_size", 16, "Image size of P7.")
flags.DEFINE_integer("wrn_rounds", 3, "Timing rounds per depth in P7.")
flags.DEFINE_integer("matmul_size", 1024, "Size of the square matrices of P6's peak measurement.")
flags.DEFINE_bool("compare_onednn", True, "Also time ResNet-50 training with TF_ENABLE_ONEDNN_OPTS=0 and =1.")
flags.DEFINE_integer("onednn_rounds", 2, "Subprocesses per TF_ENABLE_ONEDNN_OPTS value.")
flags.DEFINE_enum("worker", None, ["sync_bn", "onednn"], "Internal: run one measurement in this subprocess.")
flags.DEFINE_string("worker_output", None, "Internal: where a worker writes its result.")
FLAGS = flags.FLAGS

# --quick: every figure runs end to end in seconds; the numbers mean nothing.
QUICK = {
    "rounds": 1,
    "steps_per_round": 1,
    "warmup_steps": 0,
    "resnet_batch_size": 2,
    # At 32x32 the last stage is 1x1: two images give BatchNorm variances
    # near 0 and folding then divides by them.
    "resnet_image_size": 64,
    "resnet_modes": ["eager"],
    "layers_batch_size": 4,
    "layers_image_size": 8,
    "layers_modes": ["graph"],
    "layers_rounds": 1,
    "layers_steps_per_round": 2,
    "sync_bn_model": "wrn_10_1",
    "sync_bn_batch_size": 4,
    "sync_bn_image_size": 8,
    "sync_bn_steps_per_round": 1,
    "build_model": "wrn_16_2",
    "wrn_depths": ["10", "16"],
    "wrn_batch_size": 2,
    "wrn_image_size": 8,
    "wrn_rounds": 1,
    "matmul_size": 256,
    "compare_onednn": False,
}

NUM_CLASSES = 10  # P1's classifiers have 1000; the small models here 10


def _measurement(figure, name, value, unit, target, met, **details):
    return {
        "figure": figure,
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "met": met,
        "details": details,
    }


class ResNet50Pair:
    """P1's two ResNet-50s, built once and shared by P1, P3, P5 and P6."""

    def __init__(self):
        import keras

        from normzoo import benchmarking, models

        size = FLAGS.resnet_image_size
        self.input_shape = (size, size, 3)
        self.images, self.labels = benchmarking.random_batch(FLAGS.resnet_batch_size, size, 1000)
        keras.utils.set_random_seed(0)
        self.models = {
            "normzoo": models.build("resnet50", layout="keras", norm="batch", input_shape=self.input_shape),
            "keras": keras.applications.ResNet50(
                weights=None, input_shape=self.input_shape, classifier_activation=None
            ),
        }
        self.times = {}  # mode -> {name: StepTimes}
        self._graph_steps = {}
        self._inference_model = None

    def graph_step(self, name):
        from normzoo import benchmarking

        if name not in self._graph_steps:
            self._graph_steps[name] = benchmarking.train_step(self.models[name], "graph")
        return self._graph_steps[name]

    def inference_model(self):
        """A normzoo ResNet-50 that P1 has not trained, with the BatchNorm
        statistics of P1's batch (not the initial 0 and 1), for P3 and P5."""
        if self._inference_model is None:
            import keras
            import tensorflow as tf

            from normzoo import bn, models

            keras.utils.set_random_seed(1)
            model = models.build("resnet50", layout="keras", norm="batch", input_shape=self.input_shape)
            bn.recalibrate(model, tf.data.Dataset.from_tensors(self.images))
            self._inference_model = model
        return self._inference_model

    def train_times(self, mode):
        from normzoo import benchmarking

        if mode not in self.times:
            steps = {}
            for name, model in self.models.items():
                if mode == "graph":
                    step = self.graph_step(name)
                else:
                    step = benchmarking.train_step(model, mode)
                steps[name] = (step, (self.images, self.labels))
            self.times[mode] = benchmarking.compare(
                steps, rounds=FLAGS.rounds, steps_per_round=FLAGS.steps_per_round,
                warmup_steps=FLAGS.warmup_steps,
            )
        return self.times[mode]


def figure_p1(pair):
    from normzoo import benchmarking

    results = []
    for mode in FLAGS.resnet_modes:
        times = pair.train_times(mode)
        # keras time / normzoo time, round by round: normzoo's images/s over keras'.
        ratio, lowest, highest = benchmarking.ratio(times, "keras", "normzoo")
        batch = FLAGS.resnet_batch_size
        results.append(_measurement(
            "P1", f"ResNet-50 training images/s, normzoo / keras.applications ({mode})",
            ratio, "ratio", ">= 1.0", ratio >= 1.0,
            normzoo_images_per_second=batch / times["normzoo"].median,
            keras_images_per_second=batch / times["keras"].median,
            ratio_range_over_rounds=[lowest, highest],
            first_call_seconds={name: t.first_call for name, t in times.items()},
            batch_size=batch, image_size=FLAGS.resnet_image_size,
        ))
    return results


def figure_p2():
    from normzoo import benchmarking

    results = []
    for mode in FLAGS.layers_modes:
        times = benchmarking.compare_batch_norms(
            mode,
            batch_size=FLAGS.layers_batch_size,
            image_size=FLAGS.layers_image_size,
            rounds=FLAGS.layers_rounds,
            steps_per_round=FLAGS.layers_steps_per_round,
            warmup_steps=FLAGS.warmup_steps,
        )
        ratio, lowest, highest = benchmarking.ratio(times, "normzoo.BatchNorm", "keras.BatchNormalization")
        results.append(_measurement(
            "P2", f"conv net step time, normzoo BatchNorm / keras BatchNormalization ({mode})",
            ratio, "ratio", "<= 1.05", ratio <= 1.05,
            normzoo_step_ms=1e3 * times["normzoo.BatchNorm"].median,
            keras_step_ms=1e3 * times["keras.BatchNormalization"].median,
            ratio_range_over_rounds=[lowest, highest],
            batch_size=FLAGS.layers_batch_size, image_size=FLAGS.layers_image_size,
        ))
    return results


def figure_p3(pair):
    import numpy as np

    import normzoo
    from normzoo import benchmarking

    model = pair.inference_model()
    folded = normzoo.bn.fold(model)
    difference = np.max(np.abs(model(pair.images, training=False) - folded(pair.images, training=False)))
    scale = np.max(np.abs(model(pair.images, training=False)))
    results = []
    for mode in FLAGS.resnet_modes:
        steps = {
            "unfolded": (benchmarking.inference_step(model, mode), (pair.images,)),
            "folded": (benchmarking.inference_step(folded, mode), (pair.images,)),
        }
        times = benchmarking.compare(
            steps, rounds=FLAGS.rounds, steps_per_round=2 * FLAGS.steps_per_round,
            warmup_steps=FLAGS.warmup_steps,
        )
        speedup, lowest, highest = benchmarking.ratio(times, "unfolded", "folded")
        results.append(_measurement(
            "P3", f"ResNet-50 inference speed-up of bn.fold ({mode})",
            speedup, "x", ">= 1.3", speedup >= 1.3,
            unfolded_ms=1e3 * times["unfolded"].median,
            folded_ms=1e3 * times["folded"].median,
            speedup_range_over_rounds=[lowest, highest],
            max_abs_output_difference=float(difference),
            max_abs_output=float(scale),
            batch_size=FLAGS.resnet_batch_size, image_size=FLAGS.resnet_image_size,
        ))
    return results


def figure_p5(pair, built):
    import numpy as np

    import normzoo

    model = pair.inference_model()
    with tempfile.TemporaryDirectory() as directory:
        # The same weights written by Keras (no checksums: restore verifies
        # nothing) and by normzoo (a sha256 per tensor, each verified),
        # restored in alternation; the verified restore comes last, so its
        # values are the ones compared.
        paths = {
            "unverified": os.path.join(directory, "keras.weights.h5"),
            "verified": os.path.join(directory, "normzoo.weights.h5"),
        }
        model.save_weights(paths["unverified"])
        normzoo.checkpoints.save_weights(model, paths["verified"])
        fresh = normzoo.models.build("resnet50", layout="keras", norm="batch", input_shape=pair.input_shape)
        seconds = {kind: [] for kind in paths}
        cpu_seconds = {kind: [] for kind in paths}
        for _ in range(3):
            for kind, path in paths.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                report = normzoo.checkpoints.restore(fresh, path, strict=True)
                seconds[kind].append(time.perf_counter() - start)
                cpu_seconds[kind].append(time.process_time() - start_cpu)
    identical = all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, fresh.weights, strict=True)
    )
    restore_seconds = sorted(seconds["verified"])[1]
    # CPU time: building is one Python thread, so on a shared machine its
    # CPU time is what the wall time would be on an idle one.
    build_name, (build_seconds, build_cpu_seconds) = built
    return [
        _measurement(
            "P5", "restore ResNet-50 .weights.h5, strict, every tensor's sha256 verified",
            restore_seconds, "s", "< 2", restore_seconds < 2,
            seconds_each_try=seconds["verified"], cpu_seconds_each_try=cpu_seconds["verified"],
            unverified_seconds_each_try=seconds["unverified"],
            unverified_cpu_seconds_each_try=cpu_seconds["unverified"],
            verified=report.verified, variables=len(model.weights),
            restored_variables=len(report.restored), all_variables_identical=identical,
        ),
        _measurement(
            "P5", f"build {build_name}", build_seconds, "s", "< 30", build_seconds < 30,
            model=build_name, cpu_seconds=build_cpu_seconds,
        ),
    ]


def time_build(name, input_shape):
    from normzoo import models

    start, start_cpu = time.perf_counter(), time.process_time()
    model = models.build(name, input_shape=input_shape)
    return model, (time.perf_counter() - start, time.process_time() - start_cpu)


def figure_p6(pair, peak):
    from normzoo import benchmarking

    forward = {name: benchmarking.forward_multiply_adds(model) for name, model in pair.models.items()}
    profiled = benchmarking.profiled_float_ops(pair.models["normzoo"], pair.input_shape)
    profiled_multiply_adds = sum(profiled.values()) / 2
    # Analytic and profiled counts at 224x224: the published ~4.1e9 (3.9e9 counted exactly).
    results = []
    for mode in FLAGS.resnet_modes:
        times = pair.train_times(mode)
        for name in pair.models:
            training_flops = 3 * 2 * forward[name] * FLAGS.resnet_batch_size
            achieved = training_flops / times[name].median
            results.append(_measurement(
                "P6", f"ResNet-50 training FLOP/s / matmul FLOP/s, {name} ({mode})",
                achieved / peak, "fraction", ">= 0.40", achieved / peak >= 0.40,
                achieved_gflops=achieved / 1e9, matmul_peak_gflops=peak / 1e9,
                forward_multiply_adds_per_image=forward[name],
                profiled_forward_multiply_adds_per_image=profiled_multiply_adds,
                profiled_float_ops_by_type=profiled,
                step_seconds=times[name].median,
                batch_size=FLAGS.resnet_batch_size, image_size=FLAGS.resnet_image_size,
            ))
    return results


def figure_p7(peak, built_model, on_row):
    """Returns (measurements, per-depth rows); calls `on_row(rows)` after each depth."""
    import keras

    from normzoo import benchmarking

    size = FLAGS.wrn_image_size
    images, labels = benchmarking.random_batch(FLAGS.wrn_batch_size, size, NUM_CLASSES)
    rows = []
    for depth in sorted(int(d) for d in FLAGS.wrn_depths):
        name = f"wrn_{depth}_2"
        keras.utils.set_random_seed(0)
        if built_model is not None and built_model[0] == name:
            model, (build_seconds, _) = built_model[1], built_model[2]
        else:
            model, (build_seconds, _) = time_build(name, (size, size, 3))
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
            rounds=FLAGS.wrn_rounds, steps_per_round=FLAGS.steps_per_round,
            warmup_steps=FLAGS.warmup_steps,
        )
        forward = benchmarking.forward_multiply_adds(model)
        rows.append({
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
            "graph_flops_fraction": 6 * forward * FLAGS.wrn_batch_size / times["graph"].median / peak,
        })
        print(f"P7 {name}: {rows[-1]}", flush=True)
        on_row(rows)
        del model, graph, xla
        keras.backend.clear_session()
        gc.collect()
    blocks = [row["blocks"] for row in rows]
    results = []
    for key, what in (
        ("graph_step_seconds", "training step time"),
        ("xla_step_seconds", "training step time, XLA"),
        ("xla_compile_seconds", "XLA compile time"),
        ("trace_seconds", "tracing time of the step"),
    ):
        fit = benchmarking.linear_fit(blocks, [row[key] for row in rows])
        results.append(_measurement(
            "P7", f"WRN-n-2 {what} = a + b * blocks: R^2", fit.r_squared, "R^2",
            ">= 0.95", fit.r_squared >= 0.95,
            seconds_per_block=fit.slope, intercept_seconds=fit.intercept,
            residual_seconds=dict(zip([row["model"] for row in rows], fit.residuals, strict=True)),
            batch_size=FLAGS.wrn_batch_size, image_size=size,
        ))
    return results, rows


def _run_worker(kind, environment=None):
    """Runs `kind` in a subprocess of this script; returns its JSON result."""
    names = [
        "quick", "rounds", "warmup_steps", "steps_per_round", "resnet_batch_size", "resnet_image_size",
        "sync_bn_model", "sync_bn_batch_size", "sync_bn_image_size", "sync_bn_steps_per_round",
    ]
    with tempfile.TemporaryDirectory() as directory:
        output = os.path.join(directory, "result.json")
        command = [
            sys.executable, os.path.abspath(__file__), f"--worker={kind}", f"--worker_output={output}",
            *(FLAGS[name].serialize() for name in names),
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(environment or {})}
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{kind} subprocess failed:\n{completed.stderr[-4000:]}")
        with open(output) as file:
            return json.load(file)


def figure_p4():
    result = _run_worker("sync_bn")
    ratio = result["ratio"]
    return [_measurement(
        "P4", f"step time, synchronized / unsynchronized BatchNorm, 2 replicas ({FLAGS.sync_bn_model})",
        ratio, "ratio", "<= 1.15", ratio <= 1.15, **{k: v for k, v in result.items() if k != "ratio"},
    )]


def worker_sync_bn():
    import tensorflow as tf

    # Before TensorFlow creates any device.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras

    from normzoo import benchmarking, models
    from normzoo.training import TrainStep

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    size, batch = FLAGS.sync_bn_image_size, FLAGS.sync_bn_batch_size
    images, labels = benchmarking.random_batch(batch, size, NUM_CLASSES)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
    distributed = next(iter(strategy.experimental_distribute_dataset(dataset)))
    steps = {}
    for name, synchronized in (("unsynchronized", False), ("synchronized", True)):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = models.build(
                FLAGS.sync_bn_model, synchronized_bn=synchronized, input_shape=(size, size, 3)
            )
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
            optimizer.build(model.trainable_variables)
        steps[name] = (TrainStep(model, optimizer, strategy, batch, jit_compile=False), distributed)
    times = benchmarking.compare(
        steps, rounds=FLAGS.rounds, steps_per_round=FLAGS.sync_bn_steps_per_round,
        warmup_steps=FLAGS.warmup_steps,
    )
    ratio, lowest, highest = benchmarking.ratio(times, "synchronized", "unsynchronized")
    return {
        "ratio": ratio,
        "ratio_range_over_rounds": [lowest, highest],
        "synchronized_step_ms": 1e3 * times["synchronized"].median,
        "unsynchronized_step_ms": 1e3 * times["unsynchronized"].median,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch_size": batch,
        "image_size": size,
    }


def worker_onednn():
    import keras
    import numpy as np

    from normzoo import benchmarking, models, runtime

    size = FLAGS.resnet_image_size
    images, labels = benchmarking.random_batch(FLAGS.resnet_batch_size, size, 1000)
    keras.utils.set_random_seed(0)
    model = models.build("resnet50", layout="keras", norm="batch", input_shape=(size, size, 3))
    logits = model(images, training=False).numpy()
    inference = benchmarking.inference_step(model, "graph")
    step = benchmarking.train_step(model, "graph")
    first_loss = float(step(images, labels))
    times = benchmarking.compare(
        {"train": (step, (images, labels)), "inference": (inference, (images,))},
        rounds=FLAGS.rounds, steps_per_round=FLAGS.steps_per_round,
        warmup_steps=FLAGS.warmup_steps,
    )
    return {
        "train_step_seconds": times["train"].median,
        "inference_seconds": times["inference"].median,
        "first_loss": first_loss,
        "logits": logits.tolist(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
        "onednn_enabled": runtime.onednn_enabled(),
        "logits_finite": bool(np.isfinite(logits).all()),
    }


def compare_onednn():
    import numpy as np

    runs = {"0": [], "1": []}
    for round_index in range(FLAGS.onednn_rounds):
        order = ["0", "1"] if round_index % 2 == 0 else ["1", "0"]
        for value in order:
            runs[value].append(_run_worker("onednn", {"TF_ENABLE_ONEDNN_OPTS": value}))
            print(f"TF_ENABLE_ONEDNN_OPTS={value}: "
                  f"{runs[value][-1]['train_step_seconds']:.3f} s/train step", flush=True)
    median = lambda value, key: float(np.median([run[key] for run in runs[value]]))  # noqa: E731
    off, on = np.array(runs["0"][0]["logits"]), np.array(runs["1"][0]["logits"])
    return {
        "train_speedup": median("0", "train_step_seconds") / median("1", "train_step_seconds"),
        "inference_speedup": median("0", "inference_seconds") / median("1", "inference_seconds"),
        "train_step_seconds": {v: [r["train_step_seconds"] for r in runs[v]] for v in runs},
        "inference_seconds": {v: [r["inference_seconds"] for r in runs[v]] for v in runs},
        "onednn_enabled": {v: runs[v][0]["onednn_enabled"] for v in runs},
        "max_abs_logit_difference": float(np.max(np.abs(off - on))),
        "max_abs_logit": float(np.max(np.abs(off))),
        "first_loss": {v: runs[v][0]["first_loss"] for v in runs},
        "batch_size": FLAGS.resnet_batch_size,
        "image_size": FLAGS.resnet_image_size,
    }


def _format(value, unit):
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "R^2":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3f}"


def _note(measurement):
    d = measurement["details"]
    figure = measurement["figure"]
    if figure == "P1":
        return (f"{d['normzoo_images_per_second']:.2f} vs {d['keras_images_per_second']:.2f} img/s; "
                f"rounds {d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}")
    if figure == "P2":
        return (f"{d['normzoo_step_ms']:.1f} vs {d['keras_step_ms']:.1f} ms; "
                f"rounds {d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}")
    if figure == "P3":
        # The folded model runs the same convolutions, biases and ReLUs with
        # no BatchNorm left, so its speed-up is 1 / (1 - BatchNorm's share).
        share = 1 - d["folded_ms"] / d["unfolded_ms"]
        return (f"{d['unfolded_ms']:.1f} -> {d['folded_ms']:.1f} ms: BatchNorm was {100 * share:.0f}% "
                f"of inference time (1.3x needs 23%); "
                f"max |diff| {d['max_abs_output_difference']:.1e} (max |out| {d['max_abs_output']:.1f})")
    if figure == "P4":
        return (f"{d['synchronized_step_ms']:.1f} vs {d['unsynchronized_step_ms']:.1f} ms; "
                f"rounds {d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}")
    if figure == "P5" and "seconds_each_try" in d:
        return (f"tries {', '.join(f'{s:.2f}' for s in d['seconds_each_try'])} s "
                f"(CPU {', '.join(f'{s:.2f}' for s in d['cpu_seconds_each_try'])} s); without "
                f"verification (a Keras-written file) "
                f"{', '.join(f'{s:.2f}' for s in d['unverified_seconds_each_try'])} s; "
                f"{d['restored_variables']} variables, identical: {d['all_variables_identical']}")
    if figure == "P5":
        return f"CPU time {d['cpu_seconds']:.1f} s"
    if figure == "P6":
        return (f"{d['achieved_gflops']:.1f} of {d['matmul_peak_gflops']:.1f} GFLOP/s; "
                f"{d['forward_multiply_adds_per_image'] / 1e9:.3f} GMAC/image forward")
    if figure == "P7":
        return f"b = {1e3 * d['seconds_per_block']:.2f} ms/block, a = {d['intercept_seconds']:.2f} s"
    return ""


def markdown(record):
    machine, config = record["machine"], record["config"]
    lines = [
        "# normzoo benchmarks",
        "",
        f"Written by `scripts/benchmark.py` on {record['finished']} in {record['seconds'] / 60:.1f} min"
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
           if max(machine["load_average"] + record["load_average_at_end"]) > machine["cores_usable"]
           else " (below the core count: nothing else ran)."),
        "",
        "## Figures",
        "",
        "| figure | measurement | value | target | met | notes |",
        "|---|---|---|---|---|---|",
    ]
    for m in record["measurements"]:
        lines.append(f"| {m['figure']} | {m['name']} | {_format(m['value'], m['unit'])} | "
                     f"{m['target']} | {'yes' if m['met'] else '**no**'} | {_note(m)} |")
    if record.get("wrn_depths"):
        lines += [
            "",
            f"## P7: WRN-n-2 by depth (batch {config['wrn_batch_size']}, "
            f"{config['wrn_image_size']}x{config['wrn_image_size']})",
            "",
            "| model | blocks | parameters | build (s) | step (s) | first call (s) | XLA step (s) "
            "| trace (s) | XLA trace (s) | XLA compile (s) | FLOP/s fraction |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in record["wrn_depths"]:
            lines.append(
                f"| {row['model']} | {row['blocks']} | {row['parameters']:,} | {row['build_seconds']:.1f} | "
                f"{row['graph_step_seconds']:.3f} | {row['graph_first_call_seconds']:.1f} | "
                f"{row['xla_step_seconds']:.3f} | {row['trace_seconds']:.1f} | "
                f"{row['xla_trace_seconds']:.1f} | {row['xla_compile_seconds']:.1f} | "
                f"{100 * row['graph_flops_fraction']:.1f}% |"
            )
        lines.append("")
        lines.append("Residuals of the fits (s): " + "; ".join(
            f"{m['name'].split(' = ')[0]}: "
            + ", ".join(f"{k} {v:+.3f}" for k, v in m["details"]["residual_seconds"].items())
            for m in record["measurements"] if m["figure"] == "P7"
        ))
    if record.get("onednn"):
        o = record["onednn"]
        lines += [
            "",
            f"## TF_ENABLE_ONEDNN_OPTS (ResNet-50, batch {o['batch_size']}, {o['image_size']}x{o['image_size']}, "
            "graph mode, alternating subprocesses)",
            "",
            "| | =0 | =1 | speed-up of =1 |",
            "|---|---|---|---|",
            f"| training step (s) | {', '.join(f'{s:.3f}' for s in o['train_step_seconds']['0'])} | "
            f"{', '.join(f'{s:.3f}' for s in o['train_step_seconds']['1'])} | {o['train_speedup']:.2f}x |",
            f"| inference (s) | {', '.join(f'{s:.3f}' for s in o['inference_seconds']['0'])} | "
            f"{', '.join(f'{s:.3f}' for s in o['inference_seconds']['1'])} | {o['inference_speedup']:.2f}x |",
            "",
            f"oneDNN enabled: {o['onednn_enabled']}. Logits of the same initial model: max |difference| "
            f"{o['max_abs_logit_difference']:.2e} (max |logit| {o['max_abs_logit']:.2f}); first loss "
            f"{o['first_loss']['0']:.6f} vs {o['first_loss']['1']:.6f}.",
        ]
    lines += [
        "",
        "## Configuration",
        "",
        "```",
        *(f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in config.items()),
        "```",
        "",
        "Full numbers: `benchmark.json` beside this file.",
        "",
    ]
    return "\n".join(lines)


def _apply_quick():
    for name, value in QUICK.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def _check_flags():
    from normzoo import benchmarking, models

    unknown = sorted(set(FLAGS.figures) - set(FIGURES))
    if unknown:
        raise app.UsageError(f"--figures: unknown {', '.join(unknown)}; choose from {', '.join(FIGURES)}.")
    for flag in ("resnet_modes", "layers_modes"):
        for mode in FLAGS[flag].value:
            if mode not in benchmarking.MODES:
                raise app.UsageError(f"--{flag}: unknown mode {mode!r}; choose from {', '.join(benchmarking.MODES)}.")
    for depth in FLAGS.wrn_depths:
        if not depth.isdigit() or int(depth) < 10 or (int(depth) - 4) % 6:
            raise app.UsageError(f"--wrn_depths: {depth!r} is not a WRN depth n = 6N + 4 (10, 16, 22, ...).")
    if "P7" in FLAGS.figures and len(FLAGS.wrn_depths) < 2:
        raise app.UsageError("--wrn_depths: P7 fits a line, give at least 2 depths.")
    for name in (FLAGS.sync_bn_model, FLAGS.build_model):
        try:
            models.check_name(name)
        except ValueError as error:
            raise app.UsageError(str(error)) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.quick:
        _apply_quick()
    if FLAGS.worker:
        result = {"sync_bn": worker_sync_bn, "onednn": worker_onednn}[FLAGS.worker]()
        with open(FLAGS.worker_output, "w") as file:
            json.dump(result, file)
        return
    _check_flags()
    started = time.time()
    from normzoo import benchmarking, runtime

    figures = set(FLAGS.figures)
    record = {
        "complete": False,
        "machine": benchmarking.machine(),
        "onednn_enabled": runtime.onednn_enabled(),
        "config": _config(),
        "matmul_peak_flops": None,
        "figure_seconds": {},
        "measurements": [],
        "wrn_depths": [],
        "onednn": None,
    }

    def timed(label, function, *args):
        """Runs one figure, then writes what is measured so far (a long
        run that is stopped keeps its finished figures)."""
        start = time.perf_counter()
        result = function(*args)
        record["figure_seconds"][label] = time.perf_counter() - start
        print(f"{label}: {record['figure_seconds'][label]:.1f} s", flush=True)
        return result

    def add(label, function, *args):
        record["measurements"] += timed(label, function, *args)
        save(record, started)

    if figures & {"P6", "P7"}:
        record["matmul_peak_flops"] = timed(
            "P6 matmul peak", benchmarking.matmul_flops_per_second, FLAGS.matmul_size
        )
    peak = record["matmul_peak_flops"]
    pair = timed("ResNet-50 builds", ResNet50Pair) if figures & {"P1", "P3", "P5", "P6"} else None
    if "P1" in figures:
        add("P1", figure_p1, pair)
    if "P6" in figures:
        add("P6", figure_p6, pair, peak)
    if "P3" in figures:
        add("P3", figure_p3, pair)
    built = None
    if "P5" in figures:
        size = FLAGS.wrn_image_size
        model, seconds = timed("P5 build", time_build, FLAGS.build_model, (size, size, 3))
        built = (FLAGS.build_model, model, seconds)
        add("P5 restore", figure_p5, pair, (FLAGS.build_model, seconds))
        del model
    del pair
    gc.collect()
    if "P2" in figures:
        add("P2", figure_p2)
    if "P4" in figures:
        add("P4", figure_p4)
    if "P7" in figures:
        def on_row(rows):
            record["wrn_depths"] = rows
            save(record, started)

        measurements, record["wrn_depths"] = timed("P7", figure_p7, peak, built, on_row)
        record["measurements"] += measurements
        save(record, started)
    built = None
    if FLAGS.compare_onednn:
        record["onednn"] = timed("oneDNN comparison", compare_onednn)
    for m in record["measurements"]:
        print(f"{m['figure']} {m['name']}: {_format(m['value'], m['unit'])} "
              f"(target {m['target']}: {'met' if m['met'] else 'MISSED'}) {_note(m)}", flush=True)
    record["complete"] = True
    text = save(record, started)
    print()
    print(text)
    print(f"Wrote {os.path.join(FLAGS.output_dir, 'BENCHMARKS.md')} and benchmark.json")


def save(record, started):
    """Writes benchmark.json and BENCHMARKS.md; returns the Markdown."""
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    record["seconds"] = time.time() - started
    record["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    text = markdown(record)
    with open(os.path.join(FLAGS.output_dir, "benchmark.json"), "w") as file:
        json.dump(record, file, indent=1, default=_json_default)
    with open(os.path.join(FLAGS.output_dir, "BENCHMARKS.md"), "w") as file:
        file.write(text)
    return text


def _config():
    names = [
        "quick", "figures", "rounds", "warmup_steps", "steps_per_round", "resnet_batch_size", "resnet_image_size",
        "resnet_modes", "layers_batch_size", "layers_image_size", "layers_modes", "layers_rounds",
        "layers_steps_per_round", "sync_bn_model", "sync_bn_batch_size", "sync_bn_image_size",
        "sync_bn_steps_per_round", "build_model", "wrn_depths", "wrn_batch_size", "wrn_image_size",
        "wrn_rounds", "matmul_size", "compare_onednn", "onednn_rounds",
    ]
    return {name: FLAGS[name].value for name in names}


def _json_default(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"Not JSON serializable: {type(value).__name__}")


if __name__ == "__main__":
    _app.run(main)
