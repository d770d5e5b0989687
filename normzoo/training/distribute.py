"""Distribution strategies and the XLA form of a training step (TensorFlow-only).

What works where was measured on TF 2.21:

- one replica: the whole step (forward, backward, optimizer update) compiles
  as one XLA computation with `tf.function(jit_compile=True)`;
- several replicas on GPUs/TPUs: TensorFlow compiles collectives into XLA
  there, so the replica step is compiled whole;
- several replicas elsewhere (CPU): XLA cannot compile collectives and
  `merge_call` fails inside a nested function, so the replica's forward and
  backward pass are compiled (`jit_scope`), while the collectives (gradient
  all-reduce, synchronized BatchNorm's gather) and `apply_gradients` run
  outside the compiled clusters.
"""

import json
import os

import tensorflow as tf

from normzoo import _tf_internals, backends

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

XLA_FORMS = {
    "none": "no XLA",
    "whole_step": "XLA: the whole step is one compiled computation (tf.function(jit_compile=True))",
    "replica_step": "XLA: each replica's step is compiled whole, collectives included (all devices are GPUs)",
    "tpu": "XLA: TPUStrategy compiles every step by itself",
    "segmented": (
        "XLA: each replica's forward/backward pass is compiled (jit_scope); collectives and "
        "apply_gradients run outside the compiled clusters (collectives cannot be compiled here)"
    ),
}


def make_strategy(name, tpu_address=None):
    """Returns the `tf.distribute.Strategy` named by `name` (one of STRATEGIES).

    `multi_worker` reads the cluster from the `TF_CONFIG` environment variable;
    `mirrored` uses every local GPU, or every logical CPU device when there is
    no GPU; `default` runs on one device.
    """
    backends.require_tensorflow("make_strategy (tf.distribute strategies)")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker needs the cluster in the TF_CONFIG environment "
                "variable, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:port\", "
                "\"host2:port\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def is_chief(strategy):
    """True in the process that writes checkpoints, logs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_dir(model_dir, strategy):
    """Where this process writes: `model_dir` on the chief, a private
    subdirectory on other workers (MultiWorkerMirroredStrategy needs every
    worker to save, but only the chief's files are kept)."""
    if is_chief(strategy):
        return model_dir
    return os.path.join(model_dir, "workers", f"worker_{strategy.cluster_resolver.task_id}")


def replica_devices(strategy):
    """The devices this process runs replicas on."""
    # The default strategy (one device) has no `extended.worker_devices`.
    if _tf_internals.is_default_strategy(strategy):
        gpus = tf.config.list_logical_devices("GPU")
        return [(gpus or tf.config.list_logical_devices("CPU"))[0].name]
    return list(strategy.extended.worker_devices)


def _device_types(strategy):
    return {tf.DeviceSpec.from_string(d).device_type for d in replica_devices(strategy)}


def choose_xla_form(strategy, jit_compile):
    """The XLA form for a training step under `strategy` (a key of XLA_FORMS)."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    if not jit_compile:
        return "none"
    if _tf_internals.is_default_strategy(strategy):
        return "whole_step"  # one device, no collectives
    if _device_types(strategy) == {"GPU"}:
        return "replica_step"
    return "segmented"
