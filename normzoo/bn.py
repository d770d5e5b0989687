"""BatchNorm utilities for pretrained and fine-tuned networks.

    normzoo.bn.audit(model)                      # statistics lost on the way?
    normzoo.bn.freeze(model)                     # fine-tune with frozen statistics
    normzoo.bn.recalibrate(model, dataset, 200)  # Precise BN population statistics
    inference_model = normzoo.bn.fold(model)     # BatchNorm folded into convolutions
    model = normzoo.bn.convert(keras_model)      # Keras' BatchNormalization -> ours

They apply to every `normzoo.layers.BatchNorm` of a model (nested models
included); `audit`, `recalibrate` and `fold` also to
`keras.layers.BatchNormalization`, and `convert` turns those into ours so
that `freeze` applies to any functional Keras model, e.g. a pretrained
keras.applications network.
"""

import dataclasses

import keras
import numpy as np

from normzoo import _keras_graph
from normzoo.backends import TENSORFLOW
from normzoo.layers import BatchNorm, BatchNormalization, LayerNorm, LayerNormalization

if TENSORFLOW:
    import tensorflow as tf


def _numpy(variable, dtype=None):
    """A variable's (or tensor's) value as a NumPy array of its own, on any backend
    (`Variable.numpy()` fails for a trainable variable on PyTorch)."""
    return np.array(keras.ops.convert_to_numpy(variable), dtype=dtype)


def _batch_norms(model, types=(BatchNorm, keras.layers.BatchNormalization)):
    return [layer for layer in _keras_graph.leaf_layers(model) if isinstance(layer, types)]


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
    were never trained or were lost by a partial restore, e.g. of the
    trainable variables only), when a statistic holds NaN or Inf, or when a
    variance is negative.

    Args:
        model: A Keras model.

    Returns:
        A list of `StatisticsProblem`, in layer order; empty when every
        BatchNorm layer's statistics are plausible.
    """
    problems = []
    for layer in _batch_norms(model):
        mean = _numpy(layer.moving_mean)
        variance = _numpy(layer.moving_variance)
        if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
            problems.append(StatisticsProblem(layer.name, "non-finite"))
        elif (variance < 0).any():
            problems.append(StatisticsProblem(layer.name, "negative variance"))
        elif (mean == 0).all() and (variance == 1).all():
            problems.append(StatisticsProblem(layer.name, "uninitialized"))
    return problems


# normzoo's layers under Keras' class names, which Keras' `.weights.h5`
# files key layers by: files load both ways between a model and its copy.
_KERAS_EQUIVALENTS = {
    keras.layers.BatchNormalization: BatchNormalization,
    keras.layers.LayerNormalization: LayerNormalization,
}


def convert(model, *, layer_norm=False):
    """A copy of a Keras model with normzoo's normalization layers.

    Every `keras.layers.BatchNormalization` (and, with `layer_norm=True`,
    every `keras.layers.LayerNormalization`) of `model` and of the
    functional and Sequential models nested in it becomes a
    `normzoo.layers.BatchNorm` (`LayerNorm`) with the same configuration,
    name, weights and moving statistics; everything else is copied as it
    is: layer names, shared layers (a layer used twice is one layer used
    twice in the copy too), inputs and outputs, nested models, every
    layer's `trainable` flag and dtype policy. The copy computes what
    `model` computes, in inference and in training, up to float32
    rounding; `freeze`, `recalibrate`, `fold` and `audit` then apply to it:

        model = keras.applications.ResNet50(weights="imagenet")
        model = normzoo.bn.convert(model)
        normzoo.bn.freeze(model)   # fine-tune with frozen statistics

    The copy has its own variables: `model` is not changed, and later
    changes to either do not reach the other. The new layers are
    `normzoo.layers.BatchNormalization` and `LayerNormalization`: normzoo's
    layers under Keras' class names, because Keras 3 keys a layer's weights
    in `.weights.h5` files by its class name (`layers/batch_normalization_3`),
    not its `name`. So a weights file saved from `model` loads into the copy
    with `copy.load_weights(path)` (or `normzoo.checkpoints.restore`), and
    one saved from the copy loads into `model`.

    Args:
        model: A functional (`keras.Model(inputs, outputs)`) or Sequential
            Keras model.
        layer_norm: Also replace `keras.layers.LayerNormalization` by
            `normzoo.layers.LayerNorm` (normalized over, and with gamma and
            beta spanning, the same axes).

    Returns:
        A new `keras.Model` with the same name (Sequential if `model` is).

    Raises:
        TypeError: `model` is a subclassed model (its `call` is Python
            code that cannot be rebuilt), or a layer to replace sits inside
            a subclassed model nested in it, or is a subclass of Keras'
            layer (which may compute something else). The message names
            them; use `normzoo.layers.BatchNorm` in that code instead.
    """
    _require_graph_model(
        model,
        "convert",
        "Use normzoo.layers.BatchNorm in place of keras.layers.BatchNormalization in its code "
        "(it takes the same arguments and weights), or build it with the functional API.",
    )
    replaced = {
        keras_class: ours
        for keras_class, ours in _KERAS_EQUIVALENTS.items()
        if layer_norm or ours is BatchNormalization
    }
    _refuse_unreachable(model, tuple(replaced))

    def clone(layer):
        ours = replaced.get(type(layer))
        if ours is None:
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        if ours is LayerNormalization:
            # Keras' gamma and beta span the normalized axes.
            config["param_axis"] = config["axis"]
        return ours.from_config(config)

    return _keras_graph.rebuild(model, clone, _keras_graph.same_variables)


def _require_graph_model(model, function, fix):
    if not _keras_graph.is_graph_model(model):
        raise TypeError(
            f"{function} rebuilds a model from its graph of layers, so it needs a functional "
            f"(keras.Model(inputs, outputs)) or Sequential model; {model.name!r} is a "
            f"subclassed {type(model).__name__}, whose call() is Python code. {fix}"
        )


def _refuse_unreachable(model, keras_classes):
    """Refuses layers of `keras_classes` that cloning the graph cannot
    replace: those inside a nested subclassed model, and subclasses."""
    problems = []
    for graph in _keras_graph.graph_models(model):
        for layer in graph.layers:
            if isinstance(layer, keras.Model) and not _keras_graph.is_graph_model(layer):
                inside = [
                    n.name
                    for n in _keras_graph.leaf_layers(layer)
                    if isinstance(n, keras_classes)
                ]
                if inside:
                    problems.append(
                        f"{', '.join(inside[:5])} inside the subclassed model {layer.name!r} "
                        f"({type(layer).__name__})"
                    )
            elif isinstance(layer, keras_classes) and type(layer) not in keras_classes:
                problems.append(
                    f"{layer.name!r}, a {type(layer).__name__} (a subclass of Keras' layer, "
                    f"which may compute something else)"
                )
    if problems:
        raise TypeError(
            f"convert cannot replace {'; '.join(problems)}. Use normzoo.layers.BatchNorm "
            f"(LayerNorm) in that code in place of Keras' layer: it takes the same arguments "
            f"and weights."
        )


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
            to False freezes gamma and beta too); `convert(model)` returns
            the model with normzoo's layers, which `freeze` accepts.
    """
    foreign = [layer.name for layer in _batch_norms(model, (keras.layers.BatchNormalization,))]
    if foreign:
        raise TypeError(
            f"freeze needs normzoo.layers.BatchNorm; {', '.join(foreign[:5])} "
            f"{'are' if len(foreign) > 1 else 'is'} keras.layers.BatchNormalization, which "
            f"cannot freeze its statistics alone. Convert the model first: "
            f"model = normzoo.bn.convert(model) (same weights and statistics, normzoo's "
            f"BatchNorm), then normzoo.bn.freeze(model)."
        )
    frozen = []
    for layer in _batch_norms(model, (BatchNorm,)):
        layer.frozen_stats = True
        if gamma_beta:
            layer.trainable = False
        frozen.append(layer.name)
    return frozen


def recalibrate(model, dataset, num_batches=None, *, batch_size=None):
    """Re-estimates every BatchNorm layer's population statistics (Precise BN).

    Runs the model in training mode on `num_batches` batches of `dataset`
    (every BatchNorm normalizing with its batch's statistics, as in
    training, also inside a nested model called with `training=False`),
    records each BatchNorm input's per-batch, per-channel mean mu_b and
    biased variance var_b over n_b elements (batch x height x width), and
    sets

        moving_mean     = mu  = sum_b n_b mu_b / N
        moving_variance =       sum_b n_b (var_b + (mu_b - mu)^2) / N,

    N = sum_b n_b: the exact mean and (biased) variance of the layer's input
    over all the elements of all the batches, as one pass over the
    concatenated batches would compute them (batches of different sizes are
    weighted by size), rather than an exponential moving average dominated
    by the last batches. A layer called at several places of the model
    pools the inputs of all its calls. The per-batch results are merged in
    float64 with Chan et al.'s pairwise update. Reference: Wu & Johnson,
    "Rethinking 'Batch' in BatchNorm", 2021, section 3 ("Precise BN").

    With Batch Renormalization (`renorm=True`) the layer's `moving_stddev`
    is set to sqrt(moving_variance + epsilon), and `renorm_mean` and
    `renorm_stddev` to the same mean and standard deviation.

    Nothing but the moving statistics changes: the model's other variables
    (random-generator states included) and every layer's `trainable` and
    `frozen_stats` are as they were before. The batches run on one device;
    a model built in a distribution strategy's scope is recalibrated from
    cross-replica code (in or outside the scope, not inside
    `strategy.run`), and every replica's moving statistics get the result.

    Args:
        model: A Keras model with BatchNorm layers (`normzoo.layers.BatchNorm`
            or `keras.layers.BatchNormalization`), nested models included.
        dataset: Either a NumPy array or tensor of examples (first axis),
            split into batches of `batch_size` in order, the last one
            possibly smaller; or any other iterable of batches (a
            `tf.data.Dataset`, a `keras.utils.PyDataset`, a list, a
            generator), each an array or tensor of examples, or a tuple or
            list whose first element is what the model takes (such as
            (images, labels)), or a dict with an "image" entry.
        num_batches: How many batches to use; None for all of them (a finite
            dataset).
        batch_size: Examples per batch when `dataset` is an array or
            tensor; None means 32, as in Keras' `Model.predict`. Leave it
            None for an iterable of batches, which is batched already.

    Returns:
        The number of examples the statistics were estimated from.

    Raises:
        ValueError: the model has no BatchNorm layer, num_batches or
            batch_size is not positive, batch_size is given with an
            iterable of batches, the dataset has fewer than `num_batches`
            batches, a BatchNorm layer is not called by the model or is
            called with a mask.
        TypeError: `dataset` is not iterable, or one of its batches holds
            no array or tensor.
        RuntimeError: called inside `strategy.run`.
    """
    if (
        TENSORFLOW
        and tf.distribute.has_strategy()
        and not tf.distribute.in_cross_replica_context()
    ):
        raise RuntimeError(
            "recalibrate was called inside strategy.run (a replica context); call it from "
            "cross-replica code, outside strategy.run: it sets every replica's statistics."
        )
    norms = _batch_norms(model)
    if not norms:
        raise ValueError(f"Model {model.name!r} has no BatchNorm layer to recalibrate.")
    if num_batches is not None and num_batches <= 0:
        raise ValueError(f"num_batches must be positive or None; got {num_batches}.")
    dataset = _batched(dataset, batch_size)
    index_of = {id(layer): index for index, layer in enumerate(norms)}
    traced = {}  # layer index -> [(count, mean, variance)], one per call, while tracing

    def record_and_normalize_with_batch_statistics(layer, call, inputs, *args, **kwargs):
        if kwargs.get("mask") is not None:
            raise ValueError(
                f"BatchNorm layer {layer.name!r} is called with a mask; recalibrate does not "
                f"handle masked inputs. Recalibrate a model without masking."
            )
        traced.setdefault(index_of[id(layer)], []).append(_channel_moments(layer, inputs))
        return call(inputs, *args, **{**kwargs, "training": True})

    def batch_moments(inputs):
        traced.clear()
        model(inputs, training=True)
        return dict(traced)

    # On TensorFlow one traced function serves every batch. Other backends
    # run the model eagerly: its statistics are recorded as it runs (jax.jit
    # would have to return the moving statistics it updates as outputs).
    if TENSORFLOW:
        batch_moments = tf.function(batch_moments, reduce_retracing=True)

    saved_values = [_numpy(variable) for variable in model.variables]
    saved_flags = [(layer.trainable, getattr(layer, "frozen_stats", None)) for layer in norms]
    totals = [None] * len(norms)
    examples = batches = 0
    try:
        for layer in norms:
            layer.trainable = True
            if isinstance(layer, BatchNorm):
                layer.frozen_stats = False
        with _keras_graph.intercepted_calls(norms, record_and_normalize_with_batch_statistics):
            for element in dataset:
                if num_batches is not None and batches == num_batches:
                    break
                inputs = _model_inputs(element)
                for index, calls in batch_moments(inputs).items():
                    for count, mean, variance in calls:
                        totals[index] = _merge(
                            totals[index], int(count), _numpy(mean), _numpy(variance)
                        )
                examples += int(keras.ops.shape(keras.tree.flatten(inputs)[0])[0])
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
    uncalled = [layer.name for layer, total in zip(norms, totals) if total is None]
    if uncalled:
        raise ValueError(
            f"BatchNorm layer(s) {', '.join(uncalled[:5])} of model {model.name!r} are not "
            f"called when the model runs, so their inputs cannot be measured; nothing was "
            f"changed. Recalibrate the model that uses them."
        )
    for layer, (count, mean, sum_of_squares) in zip(norms, totals):
        _set_statistics(layer, mean, sum_of_squares / count)
    return examples


def _set_statistics(layer, mean, variance):
    """Sets a BatchNorm layer's population statistics; with Batch
    Renormalization also the standard deviation it keeps beside them (from
    which it rebuilds the moving variance at its next update) and the
    statistics its corrections r and d start from."""
    layer.moving_mean.assign(mean.astype(np.float32))
    layer.moving_variance.assign(variance.astype(np.float32))
    if getattr(layer, "renorm", False):
        stddev = np.sqrt(variance + layer.epsilon).astype(np.float32)
        layer.moving_stddev.assign(stddev)
        layer.renorm_mean.assign(mean.astype(np.float32))
        layer.renorm_stddev.assign(stddev)


def _channel_moments(layer, features):
    """(elements per channel, mean, biased variance) of a BatchNorm input
    over every axis but the layer's channel axis, in float32."""
    features = keras.ops.cast(features, "float32")
    axis = _axis(layer, len(features.shape))
    reduction_axes = [a for a in range(len(features.shape)) if a != axis]
    count = keras.ops.size(features) // keras.ops.shape(features)[axis]
    mean = keras.ops.mean(features, reduction_axes)
    # Two passes (deviations from the mean), as BatchNorm computes it.
    variance = keras.ops.var(features, reduction_axes)
    return count, mean, variance


def _axis(layer, rank):
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        (axis,) = axis
    return axis % rank


def _is_array(value):
    return isinstance(value, np.ndarray) or keras.ops.is_tensor(value)


def _batched(dataset, batch_size):
    """An iterable of batches: `dataset` itself, or an array split."""
    if _is_array(dataset):
        batch_size = 32 if batch_size is None else batch_size
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        return (dataset[start : start + batch_size] for start in range(0, len(dataset), batch_size))
    if batch_size is not None:
        raise ValueError(
            f"batch_size splits an array of examples into batches; a "
            f"{type(dataset).__name__} is an iterable of batches already. Leave batch_size "
            f"None, or pass the examples as one array."
        )
    try:
        iter(dataset)
    except TypeError:
        raise TypeError(
            f"recalibrate needs a NumPy array or tensor of examples, or an iterable of "
            f"batches (a tf.data.Dataset, a keras.utils.PyDataset, a list, a generator); "
            f"got a {type(dataset).__name__}."
        ) from None
    return dataset


def _model_inputs(element):
    """What the model takes, from one batch of the dataset."""
    if isinstance(element, dict):
        if "image" not in element:
            raise ValueError(
                f"A dataset of dicts needs an 'image' entry; got keys {sorted(element)}."
            )
        element = element["image"]
    elif isinstance(element, (tuple, list)):
        element = element[0]
    leaves = keras.tree.flatten(element)
    if not leaves or not all(_is_array(leaf) for leaf in leaves):
        raise TypeError(
            f"A batch of the dataset holds a {type(element).__name__}, not an array or tensor "
            f"of examples. Each batch must be one (or a tuple or list whose first element is "
            f"one, such as (images, labels), or a dict with an 'image' entry)."
        )
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

    A BatchNorm (`normzoo.layers.BatchNorm` or
    `keras.layers.BatchNormalization`, called once) whose input is the
    output of a `Conv2D` (channels-last, no activation, called once, used by
    nothing else) is removed, and the convolution gets the kernel and bias
    that compute both in one:

        scale  = gamma / sqrt(moving_variance + epsilon)
        kernel = kernel * scale                     (per output channel)
        bias   = (bias - moving_mean) * scale + beta

    (computed in float64). This holds inside nested functional and
    Sequential models too (a backbone inside a classifier), which are
    copied with their BatchNorms folded. Other BatchNorm layers (the
    pre-activations of v2 ResNets, which follow an addition, and any inside
    a nested subclassed model) are kept. The copy has its own variables:
    the original model is not changed, and later changes to it do not reach
    the copy. Use the copy for inference only (training=False): it has no
    batch statistics to train with.

    Args:
        model: A functional or Sequential Keras model.

    Returns:
        A new `keras.Model`, named "<name>_folded", whose outputs equal the
        model's in inference mode up to float32 rounding.

    Raises:
        TypeError: `model` is a subclassed model.
    """
    _require_graph_model(
        model, "fold", "Build it with the functional API or as a Sequential model."
    )
    norm_of = {}  # id(conv) -> the BatchNorm folded into it
    for graph in _keras_graph.graph_models(model):
        convs = {id(layer.output): layer for layer in graph.layers if _foldable_conv(layer)}
        for layer in graph.layers:
            if _foldable_norm(layer) and id(layer.input) in convs:
                norm_of[id(convs[id(layer.input)])] = layer
    folded_norms = {id(norm) for norm in norm_of.values()}

    identities = set()  # id() of the Identity layers that take their place

    def clone(layer):
        if id(layer) in folded_norms:
            identity = keras.layers.Identity(name=layer.name)
            identities.add(id(identity))
            return identity
        config = layer.get_config()
        if id(layer) in norm_of:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def variables_of(layer, copy):
        if id(layer) in norm_of:
            return _fold_weights(layer, norm_of[id(layer)])
        if id(layer) in folded_norms:
            return []
        return _keras_graph.same_variables(layer, copy)

    def call(layer, *args, **kwargs):
        if id(layer) in identities:
            # Keras' BatchNormalization is called with mask=..., which
            # Identity does not take (the mask passes through it all the same).
            return layer(*args)
        return layer(*args, **kwargs)

    folded = _keras_graph.rebuild(model, clone, variables_of, call)
    folded.name = f"{model.name}_folded"
    return folded


def _foldable_conv(layer):
    return (
        type(layer) is keras.layers.Conv2D
        and layer.data_format == "channels_last"
        and layer.activation is keras.activations.linear
        and _keras_graph.call_counts(layer) == (1, 1)
    )


def _foldable_norm(layer):
    return (
        isinstance(layer, (BatchNorm, keras.layers.BatchNormalization))
        and _keras_graph.call_counts(layer)[0] == 1
        and _axis(layer, len(layer.input.shape)) == len(layer.input.shape) - 1
    )


def _fold_weights(conv, norm):
    kernel = _numpy(conv.kernel, np.float64)
    bias = _numpy(conv.bias, np.float64) if conv.use_bias else 0.0
    mean = _numpy(norm.moving_mean, np.float64)
    variance = _numpy(norm.moving_variance, np.float64)
    gamma = _numpy(norm.gamma, np.float64) if norm.gamma is not None else 1.0
    beta = _numpy(norm.beta, np.float64) if norm.beta is not None else 0.0
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]
