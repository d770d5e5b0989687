"""Training and evaluation steps under any strategy, with or without XLA."""

import itertools
from collections import Counter

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from normzoo import _tf_internals, backends, runtime
from normzoo.training.distribute import XLA_FORMS, choose_xla_form


def _sum_over_replicas(strategy, per_replica):
    return tf.nest.map_structure(
        lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), per_replica
    )


class TrainStep:
    """One optimizer step on a distributed batch, in the XLA form that works
    under the strategy at hand (see `normzoo.training.distribute`).

    Calling it with a distributed `(images, labels)` batch runs one step and
    returns the global `(loss_sum, correct, count)`: the sum of per-example
    losses, the number of correct top-1 predictions and of examples. The
    loss being minimized is the mean over the global batch plus the model's
    regularization losses.

    Attributes:
        form: the XLA form used, a key of `XLA_FORMS`.
        xla_evidence: after the first call, what shows that XLA compiled
            something (or None when no XLA was asked for).
    """

    def __init__(self, model, optimizer, strategy, global_batch_size, jit_compile):
        backends.require_tensorflow("TrainStep (a tf.distribute training step)")
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self.form = choose_xla_form(strategy, jit_compile)
        self.xla_evidence = None
        self._loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        self._function = self._build(self.form)
        self._calls = 0

    def _forward_backward(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = self._loss(labels, logits)
            loss = tf.reduce_sum(per_example) / self.global_batch_size
            if self.model.losses:
                replicas = self.strategy.num_replicas_in_sync
                loss += tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) / replicas
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32)
        )
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return (tf.reduce_sum(per_example), correct, count), gradients

    def _replica_step(self, images, labels):
        if self.form == "segmented":
            with tf.xla.experimental.jit_scope(compile_ops=True, separate_compiled_gradients=False):
                metrics, gradients = self._forward_backward(images, labels)
        else:
            metrics, gradients = self._forward_backward(images, labels)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return metrics

    def _build(self, form):
        replica_step = self._replica_step
        if form == "replica_step":
            replica_step = tf.function(self._replica_step, jit_compile=True)

        def step(images, labels):
            per_replica = self.strategy.run(replica_step, args=(images, labels))
            return _sum_over_replicas(self.strategy, per_replica)

        return runtime.own_function(step, jit_compile=(form == "whole_step"))

    def __call__(self, images, labels):
        self._calls += 1
        if self._calls > 1:
            return self._function(images, labels)
        try:
            return self._first_call(images, labels)
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as error:
            if self.form != "replica_step":
                raise
            # The whole replica step did not compile here (e.g. a collective
            # XLA cannot compile on these devices): fall back to the form
            # that keeps collectives out of the compiled clusters.
            logging.warning("XLA could not compile the whole replica step (%s); using the "
                            "segmented form instead.", str(error).splitlines()[0])
            self.form = "segmented"
            self._function = self._build(self.form)
            return self._first_call(images, labels)

    def _first_call(self, images, labels):
        if self.form == "whole_step":
            hlo = self._function.experimental_get_compiler_ir(images, labels)(stage="hlo")
            instructions = sum(1 for line in hlo.splitlines() if " = " in line)
            self.xla_evidence = f"the step compiled to one HLO module of {instructions} instructions"
            return self._function(images, labels)
        if self.form in ("none", "tpu"):
            return self._function(images, labels)
        result, metadata = _tf_internals.call_with_run_metadata(self._function, images, labels)
        ops = Counter(
            node.op
            for graph in metadata.function_graphs
            for partition in graph.partition_graphs
            for node in partition.node
        )
        launched = ops["_XlaRun"] + ops["XlaLaunch"]
        self.xla_evidence = f"XLA ran {launched} compiled clusters in the first step"
        return result

    def describe(self):
        text = XLA_FORMS[self.form]
        return f"{text}; {self.xla_evidence}" if self.xla_evidence else text


class EvalStep:
    """Inference on a distributed batch `(images, labels)` or `(images,
    labels, weights)`; returns the global `(loss_sum, correct, count)`,
    each example counted with its weight (1 when none is given): the
    padding of `normzoo.data.load(..., repeat=True)`, of weight 0, counts
    for nothing.

    With `batch_statistics=True` the model is called with `training=True`:
    each BatchNorm normalizes the batch with the batch's own statistics (as
    a TF1 graph built with `is_training=True` does at test time), except
    layers with frozen statistics or not trainable, which keep their moving
    statistics. The moving statistics the call updates are set back, so no
    variable changes. A diagnostic of how predictions depend on the batch,
    for unpadded batches: padding would enter the batch statistics.
    """

    def __init__(self, model, strategy, batch_statistics=False):
        backends.require_tensorflow("EvalStep (a tf.distribute evaluation step)")
        self.model = model
        self.strategy = strategy
        self._loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

        def forward(images):
            if not batch_statistics:
                return model(images, training=False)
            saved = [tf.identity(v) for v in model.non_trainable_variables]
            logits = model(images, training=True)
            with tf.control_dependencies([logits]):
                for variable, value in zip(model.non_trainable_variables, saved):
                    variable.assign(value)
            return logits

        def replica_step(images, labels, weights=None):
            logits = tf.cast(forward(images), tf.float32)
            predictions = tf.argmax(logits, -1, output_type=labels.dtype)
            if weights is None:
                weights = tf.ones(tf.shape(labels), tf.float32)
            return (
                tf.reduce_sum(self._loss(labels, logits) * weights),
                tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32) * weights),
                tf.reduce_sum(weights),
            )

        def step(*batch):
            return _sum_over_replicas(strategy, strategy.run(replica_step, args=batch))

        # One trace serves batches of every size (a split's last batch, or
        # single-class batches).
        self._function = runtime.own_function(step, reduce_retracing=True)

    def __call__(self, images, labels, weights=None):
        batch = (images, labels) if weights is None else (images, labels, weights)
        return self._function(*batch)


def evaluate(eval_step, dataset, steps=None):
    """Mean loss and top-1 accuracy of `eval_step` over a (distributed)
    dataset, or over the next `steps` batches of an iterator (such as one
    of `normzoo.data.load(..., repeat=True)`, a pass of which is
    `normzoo.data.evaluation_steps` steps), each example weighted by its
    weight where batches have one."""
    batches = dataset if steps is None else itertools.islice(dataset, steps)
    sums = np.zeros(3)
    for batch in batches:  # (images, labels) or (images, labels, weights)
        sums += np.array([float(v) for v in eval_step(*batch)])
    return {"loss": sums[0] / max(sums[2], 1), "accuracy": sums[1] / max(sums[2], 1)}
