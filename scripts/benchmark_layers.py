"""Step time of a small conv net: normzoo BatchNorm vs keras BatchNormalization.

Both nets are built, compiled and timed side by side in one process, in
alternating rounds so that machine noise hits both alike; the figure is the
median step time over rounds, and the ratio normzoo / keras (target <= 1.05).

    python scripts/benchmark_layers.py --output_dir=benchmarks
"""

import json
import os
import platform
import statistics
import time

from absl import app, flags

flags.DEFINE_integer("batch_size", 32, "Images per training step.")
flags.DEFINE_integer("image_size", 32, "Height and width of the input images.")
flags.DEFINE_integer("rounds", 7, "Alternating timing rounds per net and mode.")
flags.DEFINE_integer("steps_per_round", 10, "Training steps timed per round.")
flags.DEFINE_list("modes", ["eager", "graph", "xla"], "Execution modes to time.")
flags.DEFINE_string("output_dir", "benchmarks", "Where benchmark_layers.json is written.")
FLAGS = flags.FLAGS


def conv_net(batch_norm, image_size, classes=10):
    import keras

    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for filters, stride in ((32, 1), (64, 2), (64, 1), (128, 2)):
        x = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(x)
        x = batch_norm()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def make_train_step(model, mode):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=(mode == "xla"))


def time_steps(step, images, labels, steps):
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(images, labels)
    float(loss)  # wait for the last step
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from normzoo.layers import BatchNorm

    rng = np.random.default_rng(0)
    shape = (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)
    images = tf.constant(rng.normal(size=shape).astype("float32"))
    labels = tf.constant(rng.integers(0, 10, FLAGS.batch_size))
    candidates = {
        "normzoo.BatchNorm": lambda: BatchNorm(),
        "keras.BatchNormalization": lambda: keras.layers.BatchNormalization(),
    }
    results = []
    for mode in FLAGS.modes:
        steps = {}
        for name, factory in candidates.items():
            keras.utils.set_random_seed(0)
            steps[name] = make_train_step(conv_net(factory, FLAGS.image_size), mode)
            time_steps(steps[name], images, labels, 3)  # trace, compile, warm up
        times = {name: [] for name in candidates}
        for _ in range(FLAGS.rounds):
            for name, step in steps.items():
                times[name].append(time_steps(step, images, labels, FLAGS.steps_per_round))
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["normzoo.BatchNorm"] / medians["keras.BatchNormalization"]
        results.append(
            {
                "mode": mode,
                "normzoo_step_ms": 1e3 * medians["normzoo.BatchNorm"],
                "keras_step_ms": 1e3 * medians["keras.BatchNormalization"],
                "ratio": ratio,
                "target": "<= 1.05",
                "met": ratio <= 1.05,
            }
        )
        print(f"{mode}: normzoo {results[-1]['normzoo_step_ms']:.1f} ms, keras "
              f"{results[-1]['keras_step_ms']:.1f} ms, ratio {ratio:.3f}", flush=True)

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }
    config = {
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "rounds": FLAGS.rounds,
        "steps_per_round": FLAGS.steps_per_round,
    }
    print()
    print("| mode | normzoo BatchNorm (ms/step) | keras BatchNormalization (ms/step) | ratio | target <= 1.05 |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['normzoo_step_ms']:.1f} | {r['keras_step_ms']:.1f} | "
              f"{r['ratio']:.3f} | {'met' if r['met'] else 'MISSED'} |")
    print(f"\nmachine: {machine}\nconfig: {config}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "benchmark_layers.json")
    with open(path, "w") as f:
        json.dump({"machine": machine, "config": config, "results": results}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
