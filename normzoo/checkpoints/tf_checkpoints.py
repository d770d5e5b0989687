"""Readers of TensorFlow checkpoints (TensorFlow-only code).

A TF2 object-based checkpoint (`tf.train.Checkpoint`, what normzoo's
training loop writes) records, for every variable it saves, the variable's
name at save time: for a Keras 3 variable its path, e.g.
"conv1_bn/moving_mean". Those names are how this reader finds each tensor's
layer, so a checkpoint restores into any model with the same layer names,
whatever the order of its layers. Only the model's variables are read:
optimizer slots, the step counter and `save_counter` are reported as
ignored (resuming training restores them; `normzoo.training` does).

A TF1 name-based checkpoint (`tf.compat.v1.train.Saver`) is read as a
TF-slim ResNet (`normzoo.checkpoints.slim`).
"""

import os

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from normzoo.checkpoints import slim
from normzoo.checkpoints.report import RestoreError
from normzoo.checkpoints.source import Source, Tensor

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def read(prefix):
    """Reads the checkpoint with prefix `prefix` (the path without
    `.index`)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise RestoreError(
            f"Cannot read the TensorFlow checkpoint {prefix}: {error}. Check that its "
            f".index and .data-* files are complete (a copy may have been cut short)."
        ) from error
    try:
        shapes = reader.get_variable_to_shape_map()
        if _OBJECT_GRAPH_KEY in shapes:
            source = _read_object_based(reader, prefix)
        else:
            source = slim.read(reader, prefix)
    except RestoreError:
        raise
    except (tf.errors.OpError, IndexError, ValueError) as error:
        # A tensor's bytes fail their CRC32C checksum, or a data file is cut short.
        raise RestoreError(
            f"Cannot read the TensorFlow checkpoint {prefix}: its data is damaged or "
            f"incomplete ({type(error).__name__}: {str(error).splitlines()[0]}). Copy it again "
            f"or restore an earlier checkpoint; nothing was restored."
        ) from error
    if os.path.exists(f"{prefix}.index"):
        # The tensor bundle format (TF >= 1.0) stores a CRC32C per tensor,
        # which the reader checks on every read.
        source.passed("TensorFlow checked the CRC32C of each tensor it read")
    return source


def _read_object_based(reader, prefix):
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    root_children = {child.local_name: child.node_id for child in graph.nodes[0].children}
    if "model" in root_children:
        model_roots = ["model"]
        format_ = "normzoo_checkpoint"
    else:
        # A model saved under another name (tf.train.Checkpoint(net=...)) or
        # as the root (Keras 2 `save_weights` in the TF format): everything
        # but the optimizer and the counter. (The optimizer refers to the
        # model's variables too, so what it alone reaches is left out.)
        model_roots = [name for name in root_children if name not in ("optimizer", "save_counter")]
        format_ = "tf_object_checkpoint"
    model_nodes = set()
    for name in model_roots:
        model_nodes |= _reachable(graph, root_children[name])

    layers, ignored = {}, []
    for node_id, node in enumerate(graph.nodes):
        for attribute in node.attributes:
            key = attribute.checkpoint_key
            if node_id not in model_nodes or attribute.name != "VARIABLE_VALUE":
                ignored.append((key, "not a variable of the model (optimizer state, counters)"))
                continue
            name = attribute.full_name.split(":")[0]
            if "seed_generator" in name:
                ignored.append((key, "random-number generator state (of a Dropout layer)"))
                continue
            if "/" not in name:
                ignored.append((key, f"variable {name!r} belongs to no layer"))
                continue
            layer, weight = name.rsplit("/", 1)
            layers.setdefault(layer, {})[weight] = Tensor(key, reader.get_tensor(key))
    if not layers:
        raise RestoreError(
            f"{prefix} is a TF2 checkpoint without model variables (only "
            f"{', '.join(sorted(root_children)) or 'nothing'}). Pass a checkpoint of "
            f"tf.train.Checkpoint(model=...) such as normzoo's model_dir/checkpoints."
        )
    return Source(prefix, format_, layers, ignored)


def _reachable(graph, start):
    seen, stack = set(), [start]
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        stack.extend(child.node_id for child in graph.nodes[node_id].children)
    return seen
