"""P2: normzoo's `BatchNorm` against `keras.layers.BatchNormalization`,
step for step, in the models of `CASES`.

Each case builds one model twice from the same seed, once with each layer
(with the same layer arguments), and trains both side by side in
alternating rounds (`benchmarking.compare`) with the same step code, in
each of `settings.layers_modes`. The figure is the ratio of the median
step times, normzoo / Keras; target <= 1.05 in every case:

- conv_net: the default path (the fused kernel in graph mode, the formula
  under XLA).
- conv_net_renorm: the same net with `renorm=True` in both layers.
- masked_sequence: Embedding(mask_zero=True) -> BatchNorm -> LSTM ->
  Dense on padded token sequences, so both layers take their batch
  statistics over the unpadded positions only (the masked path: weighted
  moments, no fused kernel, in both libraries). The LSTM's loop over time
  takes most of the step (the embedding is wide and the LSTM narrow to
  leave the layer what share they can), so a ratio near 1 says less here
  than in the conv net: the case also times the model without the layer,
  and its note gives the layer's share of Keras' step. The target stays
  1.05: it is what alternating rounds resolve on a shared 2-core CPU (the
  conv net's round-by-round ratios spread by about 5%), and with the same
  work on both sides parity is what to expect.
"""

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from normzoo_lab import benchmarking
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement
from normzoo.layers import BatchNorm

NUM_CLASSES = 10
VOCABULARY_SIZE = 1000
EMBEDDING_SIZE = 128
LSTM_UNITS = 16

BATCH_NORMS = {"normzoo": BatchNorm, "keras": keras.layers.BatchNormalization}


def conv_net(batch_norm, settings):
    """`benchmarking.conv_net` on `settings.layers_image_size` images."""
    return benchmarking.conv_net(batch_norm, settings.layers_image_size, NUM_CLASSES)


def conv_net_batch(settings):
    """Random images and labels for `conv_net`."""
    return benchmarking.random_batch(settings.layers_batch_size, settings.layers_image_size, NUM_CLASSES)


def masked_sequence_net(batch_norm, settings):
    """A small sequence classifier whose normalization sees a mask:
    Embedding(VOCABULARY_SIZE, EMBEDDING_SIZE, mask_zero=True) ->
    `batch_norm()` (or nothing when `batch_norm` is None) -> LSTM(LSTM_UNITS)
    -> Dense, on token sequences of `settings.sequence_length` padded with 0."""
    inputs = keras.Input((settings.sequence_length,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY_SIZE, EMBEDDING_SIZE, mask_zero=True)(inputs)
    if batch_norm is not None:
        x = batch_norm()(x)
    x = keras.layers.LSTM(LSTM_UNITS)(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x))


def masked_sequence_batch(settings, seed=0):
    """Token sequences padded at the end with 0 (what the Embedding masks),
    their lengths spread evenly from `settings.sequence_length` down to
    about 1/batch of it (about half the positions are padding), with random
    labels."""
    rng = np.random.default_rng(seed)
    batch, length = settings.sequence_batch_size, settings.sequence_length
    lengths = length - (np.arange(batch) * length) // batch
    tokens = rng.integers(1, VOCABULARY_SIZE, (batch, length)) * (np.arange(length) < lengths[:, None])
    labels = rng.integers(0, NUM_CLASSES, batch)
    return tf.constant(tokens, tf.int32), tf.constant(labels)


@dataclasses.dataclass(frozen=True)
class Case:
    """A model in which P2 compares the two layers.

    Attributes:
        description: what it is, for --help.
        model: `(batch_norm, settings) -> keras.Model`; `batch_norm()`
            makes the layer to compare, None leaves it out.
        batch: `settings -> (inputs, labels)`.
        layer_arguments: keyword arguments given to both layers.
        model_name: how the measurement's name calls the model.
        time_without_batch_norm: also time the model without the layer
            (needs `model` to accept None).
        sizes: `settings -> {name: value}`, the sizes put in the details.
    """

    description: str
    model: Callable
    batch: Callable
    model_name: str
    sizes: Callable
    layer_arguments: dict = dataclasses.field(default_factory=dict)
    time_without_batch_norm: bool = False

    def measurement_name(self, mode):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.layer_arguments.items())
        arguments = f"({arguments})" if arguments else ""
        return (f"{self.model_name} step time, normzoo BatchNorm{arguments} / "
                f"keras BatchNormalization{arguments} ({mode})")


def _conv_net_sizes(settings):
    return {"batch_size": settings.layers_batch_size, "image_size": settings.layers_image_size}


def _sequence_sizes(settings):
    return {"batch_size": settings.sequence_batch_size, "sequence_length": settings.sequence_length}


CASES = {
    "conv_net": Case(
        "the conv net of four convolutions", conv_net, conv_net_batch, "conv net", _conv_net_sizes,
    ),
    "conv_net_renorm": Case(
        "the same with renorm=True", conv_net, conv_net_batch, "conv net", _conv_net_sizes,
        layer_arguments={"renorm": True},
    ),
    "masked_sequence": Case(
        "Embedding(mask_zero=True) -> BatchNorm -> LSTM -> Dense on padded sequences",
        masked_sequence_net, masked_sequence_batch,
        "masked sequence net (Embedding(mask_zero=True) -> BatchNorm -> LSTM)",
        _sequence_sizes,
        time_without_batch_norm=True,
    ),
}


def build_models(case, settings):
    """{"normzoo": model, "keras": model} of `case` (and "without": the
    model with no normalization layer, if the case times it), each built
    from seed 0."""
    layers = {name: (lambda layer=layer: layer(**case.layer_arguments)) for name, layer in BATCH_NORMS.items()}
    if case.time_without_batch_norm:
        layers["without"] = None
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
            without = {"without_batch_norm_step_ms": 1e3 * times["without"].median} if "without" in times else {}
            measurements.append(measurement(
                "P2", case.measurement_name(mode), ratio, "ratio", "<= 1.05",
                normzoo_step_ms=1e3 * times["normzoo"].median,
                keras_step_ms=1e3 * times["keras"].median,
                **without,
                ratio_range_over_rounds=[lowest, highest],
                case=case_name,
                **case.sizes(settings),
            ))
    return FigureResult(measurements)


def note(m):
    d = m["details"]
    text = (f"{d['normzoo_step_ms']:.1f} vs {d['keras_step_ms']:.1f} ms; "
            f"rounds {d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}")
    if "without_batch_norm_step_ms" in d:
        share = 1 - d["without_batch_norm_step_ms"] / d["keras_step_ms"]
        text += (f"; {d['without_batch_norm_step_ms']:.1f} ms without the layer: "
                 f"Keras' layer is {100 * share:.0f}% of its step")
    return text


FIGURE = Figure("P2", measure, note)
