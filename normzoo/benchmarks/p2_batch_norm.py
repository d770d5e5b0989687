"""P2: normzoo's `BatchNorm` against `keras.layers.BatchNormalization`,
step for step, in the models of `CASES`.

Each case builds one model twice from the same seed, once with each layer
(with the same layer arguments), and trains both side by side in
alternating rounds (`benchmarking.compare`) with the same step code, in
each of `settings.layers_modes`. The figure is the ratio of the median
step times, normzoo / Keras; target <= 1.05 in every case:

- conv_net: the default path (the fused kernel in graph mode, the formula
  under XLA).
"""

import dataclasses
from collections.abc import Callable

import keras

from normzoo import benchmarking
from normzoo.benchmarks.records import Figure, FigureResult, measurement
from normzoo.layers import BatchNorm

NUM_CLASSES = 10

BATCH_NORMS = {"normzoo": BatchNorm, "keras": keras.layers.BatchNormalization}


def conv_net(batch_norm, settings):
    """The small conv net in which batch normalization layers are compared:
    four 3x3 convolutions (32, 64, 64, 128 filters; strides 1, 2, 1, 2), each
    followed by `batch_norm()` and a ReLU, global average pooling and a
    dense classifier, on `settings.layers_image_size` RGB images."""
    size = settings.layers_image_size
    inputs = keras.Input((size, size, 3))
    x = inputs
    for filters, stride in ((32, 1), (64, 2), (64, 1), (128, 2)):
        x = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(x)
        x = batch_norm()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x))


def conv_net_batch(settings):
    """Random images and labels for `conv_net`."""
    return benchmarking.random_batch(settings.layers_batch_size, settings.layers_image_size, NUM_CLASSES)


@dataclasses.dataclass(frozen=True)
class Case:
    """A model in which P2 compares the two layers.

    Attributes:
        description: what it is, for --help.
        model: `(batch_norm, settings) -> keras.Model`; `batch_norm()`
            makes the layer to compare.
        batch: `settings -> (inputs, labels)`.
        layer_arguments: keyword arguments given to both layers.
        model_name: how the measurement's name calls the model.
        sizes: `settings -> {name: value}`, the sizes put in the details.
    """

    description: str
    model: Callable
    batch: Callable
    model_name: str
    sizes: Callable
    layer_arguments: dict = dataclasses.field(default_factory=dict)

    def measurement_name(self, mode):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.layer_arguments.items())
        arguments = f"({arguments})" if arguments else ""
        return (f"{self.model_name} step time, normzoo BatchNorm{arguments} / "
                f"keras BatchNormalization{arguments} ({mode})")


def _conv_net_sizes(settings):
    return {"batch_size": settings.layers_batch_size, "image_size": settings.layers_image_size}


CASES = {
    "conv_net": Case(
        "the conv net of four convolutions", conv_net, conv_net_batch, "conv net", _conv_net_sizes,
    ),
}


def build_models(case, settings):
    """{"normzoo": model, "keras": model} of `case`, each built from seed 0."""
    layers = {name: (lambda layer=layer: layer(**case.layer_arguments)) for name, layer in BATCH_NORMS.items()}
    built = {}
    for name, batch_norm in layers.items():
        keras.utils.set_random_seed(0)
        built[name] = case.model(batch_norm, settings)
    return built


def compare_case(case, mode, settings):
    """{name: StepTimes} of training `build_models(case)` side by side in `mode`."""
    inputs, labels = case.batch(settings)
    steps = {
        name: (benchmarking.train_step(model, mode), (inputs, labels))
        for name, model in build_models(case, settings).items()
    }
    return benchmarking.compare(
        steps, rounds=settings.layers_rounds, steps_per_round=settings.layers_steps_per_round,
        warmup_steps=settings.warmup_steps,
    )


def measure(settings, shared):
    measurements = []
    for case_name in settings.layers_cases:
        case = CASES[case_name]
        for mode in settings.layers_modes:
            times = compare_case(case, mode, settings)
            ratio, lowest, highest = benchmarking.ratio(times, "normzoo", "keras")
            measurements.append(measurement(
                "P2", case.measurement_name(mode), ratio, "ratio", "<= 1.05",
                normzoo_step_ms=1e3 * times["normzoo"].median,
                keras_step_ms=1e3 * times["keras"].median,
                ratio_range_over_rounds=[lowest, highest],
                case=case_name,
                **case.sizes(settings),
            ))
    return FigureResult(measurements)


def note(m):
    d = m["details"]
    return (f"{d['normzoo_step_ms']:.1f} vs {d['keras_step_ms']:.1f} ms; "
            f"rounds {d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}")


FIGURE = Figure("P2", measure, note)
