"""Walking and rebuilding Keras models: the helpers that `normzoo.bn`,
`normzoo.checkpoints` (and the lab's benchmarks) share, for any Keras
model (nothing here knows the zoo).

Keras 3 has no public API for four things they need: telling a graph model
(Functional or Sequential) from a subclassed one, how often a layer is
called and consumed in its graph, the shapes of each call, and running
code around a layer's calls. The Keras internals the first three read are
wrapped in `normzoo._keras_internals`; the fourth relies on how Keras
looks up a layer's `call` (see `intercepted_calls`).
"""

import contextlib
import functools

import keras

from normzoo import _keras_internals


def is_graph_model(layer):
    """Whether `layer` is a Functional (`keras.Model(inputs, outputs)`) or
    Sequential model: a graph of layers that `keras.models.clone_model`
    can rebuild."""
    return _keras_internals.is_functional(layer) or isinstance(layer, keras.Sequential)


def leaf_layers(model):
    """Every layer of `model` that is not itself a model, nested models
    (e.g. a backbone inside a classifier) included, in order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def graph_models(model):
    """`model` and every graph model nested in it, outer ones first.
    Subclassed models are not entered."""
    yield model
    for layer in model.layers:
        if is_graph_model(layer):
            yield from graph_models(layer)


def call_counts(layer):
    """(times `layer` is called in its model's graph, layer calls that take
    one of its outputs)."""
    return len(_keras_internals.inbound_nodes(layer)), len(_keras_internals.outbound_nodes(layer))


def call_shapes(layer):
    """[(shape of the first input, shape of the first output)] of every call
    of `layer` in its model's graph (none for an input layer). The public
    `layer.input` and `layer.output` serve only a layer called once."""
    return [
        (node.input_tensors[0].shape, node.output_tensors[0].shape)
        for node in _keras_internals.inbound_nodes(layer)
        if node.input_tensors
    ]


@contextlib.contextmanager
def intercepted_calls(layers, intercept):
    """Within the context, each call of a layer of `layers` runs
    `intercept(layer, call, *args, **kwargs)`, where `call` is the layer's
    own `call` method, instead of `call(*args, **kwargs)`.

    Keras has no forward hooks. `Operation.__call__` looks `self.call` up
    at every call (Keras 3.15.1), so an instance attribute shadows the
    class's method; it is removed on exit, even after an error.
    """
    intercepted = []
    try:
        for layer in layers:
            layer.call = functools.partial(intercept, layer, layer.call)
            intercepted.append(layer)
        yield
    finally:
        for layer in intercepted:
            del layer.call


def paired_layers(original, copy):
    """(layer, its copy) for every layer of `original` and of the graph
    models nested in it (each model before its layers), where `copy` was
    made from `original` by `rebuild`: the same graphs, so the same layer
    order."""
    for layer, copied in zip(original.layers, copy.layers, strict=True):
        if layer.name != copied.name:
            raise RuntimeError(
                f"normzoo bug: the copy of {original.name!r} lists layer {copied.name!r} where "
                f"the original has {layer.name!r}. Please report it with the model's summary()."
            )
        yield layer, copied
        if is_graph_model(layer):
            yield from paired_layers(layer, copied)


def rebuild(model, clone_function, variables_of, call_function=None):
    """A copy of the graph model `model`, nested graph models included,
    with new variables and the same layer names.

    `keras.models.clone_model` rebuilds each graph model, calling
    `clone_function` for each other layer, once however often it is used;
    then every layer's `trainable` flag (which `clone_model` does not carry
    over for a nested model) and variables are set from the original.

    Args:
        model: A Functional or Sequential model.
        clone_function: `fn(layer)` -> the new layer, for every layer that
            is neither a graph model nor an input.
        variables_of: `fn(layer, copy)` -> the values for `copy.variables`.
        call_function: `fn(new_layer, *args, **kwargs)` -> its outputs, to
            call the new layers of functional models (see
            `keras.models.clone_model`); a Sequential calls them itself.

    Returns:
        The copy; `model` is unchanged and shares no variable with it.
    """
    clones = {}  # id(layer) -> its copy, shared by every model that uses it

    def clone(layer):
        if id(layer) not in clones:
            new = clone_graph(layer) if is_graph_model(layer) else clone_function(layer)
            clones[id(layer)] = new
        return clones[id(layer)]

    def clone_graph(graph):
        # clone_model names a Functional's new inputs after its input
        # tensors, not its input layers; a Sequential keeps its input's name.
        if isinstance(graph, keras.Sequential):
            return keras.models.clone_model(graph, clone_function=clone)
        return keras.models.clone_model(
            graph,
            input_tensors=_new_inputs(graph),
            clone_function=clone,
            call_function=call_function,
        )

    copy = clone_graph(model)
    # Outer models first: a model's `trainable` setter also sets its
    # layers', whose own flags then follow.
    copy.trainable = model.trainable
    for layer, copied in paired_layers(model, copy):
        copied.trainable = layer.trainable
        if not is_graph_model(layer):
            values = variables_of(layer, copied)
            for variable, value in zip(copied.variables, values, strict=True):
                # A copy of the value, not the value: on JAX a variable's
                # value is an immutable array that `assign` keeps as it is,
                # and Keras' JAX trainer donates (deletes) the arrays of
                # the model it trains, so a shared array would leave the
                # other model with deleted buffers.
                variable.assign(keras.ops.copy(value))
    return copy


def _new_inputs(model):
    """New input tensors for a copy of the Functional `model`, in the
    structure of `model.input`, from copies of its input layers."""
    input_layers = {
        id(layer.output): layer
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    }

    def new_input(tensor):
        return keras.layers.InputLayer.from_config(input_layers[id(tensor)].get_config()).output

    return keras.tree.map_structure(new_input, model.input)


def same_variables(layer, copy):
    """The values of `layer.variables` (weights and random-generator
    states: a copied Dropout draws the same masks), for a copy that has the
    same variables (checked by name, in order)."""
    names = [variable.name for variable in layer.variables]
    copy_names = [variable.name for variable in copy.variables]
    if names != copy_names:
        raise RuntimeError(
            f"normzoo bug: layer {layer.name!r} ({type(layer).__name__}) has variables "
            f"{names}, its copy ({type(copy).__name__}) {copy_names}; their values cannot be "
            f"carried over. Please report it."
        )
    return [variable.value for variable in layer.variables]
