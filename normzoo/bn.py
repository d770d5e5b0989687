"""BatchNorm utilities for pretrained and fine-tuned networks.

    normzoo.bn.audit(model)                      # statistics lost on the way?
    normzoo.bn.freeze(model)                     # fine-tune with frozen statistics
    normzoo.bn.recalibrate(model, dataset, 200)  # Precise BN population statistics
    inference_model = normzoo.bn.fold(model)     # BatchNorm folded into convolutions

They apply to every `normzoo.layers.BatchNorm` of a model (nested models
included); `audit` and `recalibrate` also to `keras.layers.BatchNormalization`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional

from normzoo.layers import BatchNorm
from normzoo.models import leaf_layers


def _batch_norms(model, types=(BatchNorm, keras.layers.BatchNormalization)):
    return [layer for layer in leaf_layers(model) if isinstance(layer, types)]


@dataclasses.dataclass(frozen=True)
class StatisticsProblem:
    """A BatchNorm layer whose moving statistics cannot be those of a trained
    network.

    Attributes:
        layer: The layer's name.
        problem: "uninitialized" (moving mean all 0 and moving variance all
            1: the initial values, as a restore that lost them leaves them),
            "non-finite" (NaN or Inf) or "negative variance".
    """

    layer: str
    problem: str

    def __str__(self):
        return f"{self.layer}: {self.problem}"


def audit(model):
    """Names every BatchNorm layer whose statistics look wrong.

    A layer is named when its moving mean is exactly 0 and its moving
    variance exactly 1 in every channel (the initial values: the statistics
    were never trained or were lost by a partial restore, article 002's
    bug), when a statistic holds NaN or Inf, or when a variance is negative.

    Args:
        model: A Keras model.

    Returns:
        A list of `StatisticsProblem`, in layer order; empty when every
        BatchNorm layer's statistics are plausible.
    """
    problems = []
    for layer in _batch_norms(model):
        mean = np.asarray(layer.moving_mean.numpy())
        variance = np.asarray(layer.moving_variance.numpy())
        if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
            problems.append(StatisticsProblem(layer.name, "non-finite"))
        elif (variance < 0).any():
            problems.append(StatisticsProblem(layer.name, "negative variance"))
        elif (mean == 0).all() and (variance == 1).all():
            problems.append(StatisticsProblem(layer.name, "uninitialized"))
    return problems


def freeze(model, *, gamma_beta=False):
    """Freezes the moving statistics of every BatchNorm layer, for fine-tuning.

    Sets `frozen_stats=True` on every `normzoo.layers.BatchNorm`: they then
    normalize with their moving statistics in training too and never update
    them, while gamma and beta keep learning. With `gamma_beta=True` the
    layers are also made non-trainable, so gamma and beta stay fixed as well.
    Call `model.compile()` again afterwards if the model was compiled.

    Args:
        model: A Keras model.
        gamma_beta: Also freeze gamma and beta.

    Returns:
        The names of the layers frozen.

    Raises:
        TypeError: the model has `keras.layers.BatchNormalization` layers,
            which have no frozen-statistics mode (setting their `trainable`
            to False freezes gamma and beta too); build the model with
            `normzoo.models.build(..., weights=...)` instead.
    """
    foreign = [layer.name for layer in _batch_norms(model, (keras.layers.BatchNormalization,))]
    if foreign:
        raise TypeError(
            f"freeze needs normzoo.layers.BatchNorm; {', '.join(foreign[:5])} "
            f"{'are' if len(foreign) > 1 else 'is'} keras.layers.BatchNormalization, which "
            f"cannot freeze its statistics alone. Build the model with "
            f"normzoo.models.build(name, weights=...) to get normzoo's layers."
        )
    frozen = []
    for layer in _batch_norms(model, (BatchNorm,)):
        layer.frozen_stats = True
        if gamma_beta:
            layer.trainable = False
        frozen.append(layer.name)
    return frozen


def recalibrate(model, dataset, num_batches=None):
    """Re-estimates every BatchNorm layer's population statistics (Precise BN).

    Runs the model in training mode on `num_batches` batches of `dataset`
    (every BatchNorm normalizing with its batch's statistics, as in
    training), records each BatchNorm input's per-batch, per-channel mean
    mu_b and biased variance var_b over n_b elements (batch x height x
    width), and sets

        moving_mean     = mu  = sum_b n_b mu_b / N
        moving_variance =       sum_b n_b (var_b + (mu_b - mu)^2) / N,

    N = sum_b n_b: the exact mean and (biased) variance of the layer's input
    over all the elements of all the batches, as one pass over the
    concatenated batches would compute them (batches of different sizes are
    weighted by size), rather than an exponential moving average dominated
    by the last batches. The per-batch results are merged in float64 with
    Chan et al.'s pairwise update. Reference: Wu & Johnson, "Rethinking
    'Batch' in BatchNorm", 2021, section 3 ("Precise BN").

    Nothing but the moving statistics changes: the model's other variables
    (random-generator states included) and every layer's `trainable` and
    `frozen_stats` are as they were before. The batches run on one device;
    a model built in a distribution strategy's scope is recalibrated from
    cross-replica code (in or outside the scope, not inside
    `strategy.run`), and every replica's moving statistics get the result.

    Args:
        model: A Keras functional model with BatchNorm layers.
        dataset: An iterable (e.g. a `tf.data.Dataset`) of batches: an image
            batch, or a tuple or list whose first element is one (such as
            (images, labels)), or a dict with an "image" entry.
        num_batches: How many batches to use; None for all of them (a finite
            dataset).

    Returns:
        The number of examples the statistics were estimated from.

    Raises:
        ValueError: the model has no BatchNorm layer, num_batches is not
            positive, or the dataset has fewer than `num_batches` batches.
        RuntimeError: called inside `strategy.run`.
    """
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        raise RuntimeError(
            "recalibrate was called inside strategy.run (a replica context); call it from "
            "cross-replica code, outside strategy.run: it sets every replica's statistics."
        )
    norms = _batch_norms(model)
    if not norms:
        raise ValueError(f"Model {model.name!r} has no BatchNorm layer to recalibrate.")
    if num_batches is not None and num_batches <= 0:
        raise ValueError(f"num_batches must be positive or None; got {num_batches}.")
    probe = keras.Model(model.input, [layer.input for layer in norms])
    channel_axes = [_axis(layer) for layer in norms]

    @tf.function(reduce_retracing=True)
    def batch_moments(images):
        moments = []
        for features, axis in zip(probe(images, training=True), channel_axes):
            features = tf.cast(features, tf.float32)
            reduction_axes = [a for a in range(len(features.shape)) if a != axis]
            count = tf.size(features) // features.shape[axis]
            mean = tf.reduce_mean(features, reduction_axes)
            # Two passes (deviations from the mean), as BatchNorm computes it.
            variance = tf.math.reduce_variance(features, reduction_axes)
            moments.append((count, mean, variance))
        return moments

    saved_values = [variable.numpy() for variable in model.variables]
    saved_flags = [(layer.trainable, getattr(layer, "frozen_stats", None)) for layer in norms]
    totals = [None] * len(norms)
    examples = batches = 0
    try:
        for layer in norms:
            layer.trainable = True
            if isinstance(layer, BatchNorm):
                layer.frozen_stats = False
        for element in dataset:
            if num_batches is not None and batches == num_batches:
                break
            images = _images(element)
            for index, (count, mean, variance) in enumerate(batch_moments(images)):
                totals[index] = _merge(totals[index], int(count), mean.numpy(), variance.numpy())
            examples += int(tf.shape(images)[0])
            batches += 1
    finally:
        for variable, value in zip(model.variables, saved_values):
            variable.assign(value)
        for layer, (trainable, frozen_stats) in zip(norms, saved_flags):
            layer.trainable = trainable
            if frozen_stats is not None:
                layer.frozen_stats = frozen_stats
    if batches == 0:
        raise ValueError("The dataset yielded no batch; recalibrate needs at least one.")
    if num_batches is not None and batches < num_batches:
        raise ValueError(
            f"The dataset ended after {batches} batch(es); recalibrate was asked for "
            f"{num_batches}. Pass a repeated dataset or num_batches <= {batches}."
        )
    for layer, (count, mean, sum_of_squares) in zip(norms, totals):
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign((sum_of_squares / count).astype(np.float32))
    return examples


def _axis(layer):
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        (axis,) = axis
    return axis % len(layer.input.shape)


def _images(element):
    if isinstance(element, dict):
        if "image" not in element:
            raise ValueError(
                f"A dataset of dicts needs an 'image' entry; got keys {sorted(element)}."
            )
        return element["image"]
    if isinstance(element, (tuple, list)):
        return element[0]
    return element


def _merge(total, count, mean, variance):
    """Chan et al.'s update of (count, mean, sum of squared deviations) with
    a batch of `count` elements per channel, in float64."""
    mean = mean.astype(np.float64)
    squares = variance.astype(np.float64) * count
    if total is None:
        return count, mean, squares
    total_count, total_mean, total_squares = total
    merged_count = total_count + count
    delta = mean - total_mean
    merged_mean = total_mean + delta * (count / merged_count)
    merged_squares = total_squares + squares + delta**2 * (total_count * count / merged_count)
    return merged_count, merged_mean, merged_squares


def fold(model):
    """An inference copy of `model` with each BatchNorm folded into the
    convolution before it.

    A BatchNorm whose input is the output of a `Conv2D` (channels-last, no
    activation, used by nothing else) is removed, and the convolution gets
    the kernel and bias that compute both in one:

        scale  = gamma / sqrt(moving_variance + epsilon)
        kernel = kernel * scale                     (per output channel)
        bias   = (bias - moving_mean) * scale + beta

    (computed in float64). Other BatchNorm layers (the pre-activations of v2
    ResNets, which follow an addition) are kept, and so are nested models,
    copied as they are. The copy has its own
    variables: the original model is not changed, and later changes to it do
    not reach the copy. Use the copy for inference only (training=False):
    it has no batch statistics to train with.

    Args:
        model: A Keras functional model.

    Returns:
        A new `keras.Model`, named "<name>_folded", whose outputs equal the
        model's in inference mode up to float32 rounding.
    """
    if not isinstance(model, (Functional, keras.Sequential)):
        raise TypeError(
            f"fold needs a functional or Sequential model (a graph of layers); "
            f"{model.name!r} is a subclassed model."
        )
    pairs = {}  # conv name -> its BatchNorm
    for layer in model.layers:
        if isinstance(layer, (BatchNorm, keras.layers.BatchNormalization)):
            conv = _foldable_conv(layer)
            if conv is not None:
                pairs[conv.name] = layer
    folded_norms = {norm.name for norm in pairs.values()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        if layer.name in folded_norms:
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        # A functional model recorded the BatchNorm's call with its `mask`
        # argument (both layers take one); the Identity in its place takes
        # none, and passes its input's mask on by itself. (A Sequential
        # model records no calls, and Keras refuses a call_function there.)
        if layer.name in folded_norms:
            kwargs.pop("mask", None)
        return layer(*args, **kwargs)

    sequential = isinstance(model, keras.Sequential)
    folded = keras.models.clone_model(
        model, clone_function=clone, call_function=None if sequential else call
    )
    folded.name = f"{model.name}_folded"
    for layer in folded.layers:
        if layer.name in pairs:
            layer.set_weights(_fold_weights(model.get_layer(layer.name), pairs[layer.name]))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return folded


def _foldable_conv(norm):
    if len(norm._inbound_nodes) != 1:  # a layer called more than once
        return None
    history = getattr(norm.input, "_keras_history", None)
    if history is None:
        return None
    conv = history.operation
    if not (
        type(conv) is keras.layers.Conv2D
        and conv.data_format == "channels_last"
        and conv.activation is keras.activations.linear
        and _axis(norm) == len(norm.input.shape) - 1
        and len(conv._inbound_nodes) == 1
        and len(conv._outbound_nodes) == 1
    ):
        return None
    return conv


def _fold_weights(conv, norm):
    kernel = conv.kernel.numpy().astype(np.float64)
    bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else 0.0
    mean = norm.moving_mean.numpy().astype(np.float64)
    variance = norm.moving_variance.numpy().astype(np.float64)
    gamma = norm.gamma.numpy().astype(np.float64) if norm.gamma is not None else 1.0
    beta = norm.beta.numpy().astype(np.float64) if norm.beta is not None else 0.0
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]
