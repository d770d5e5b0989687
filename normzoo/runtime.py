"""Facts about the TensorFlow running in this process, for the records that
training runs (`flags.json`) and benchmarks keep, how normzoo makes the
tf.functions that each object makes for itself, and deterministic ops for
the span of a run.

Importing this module does not import TensorFlow; each function does when
called, so a JAX process may import it (the lab's benchmarks do). The
TensorFlow internals these need are wrapped in `normzoo._tf_internals`."""

import contextlib

from normzoo import _tf_internals


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (what it
    decided from TF_ENABLE_ONEDNN_OPTS and the CPU; None if unknown).

    TensorFlow exposes the decision only through a private binding
    (`normzoo._tf_internals.mkl_enabled`); another version without it gives
    None rather than an error.
    """
    try:
        return _tf_internals.mkl_enabled()
    except (ImportError, AttributeError):
        return None


@contextlib.contextmanager
def deterministic_ops(enabled=True):
    """Within the context, with `enabled`, TensorFlow runs deterministic op
    implementations (`tf.config.experimental.enable_op_determinism`: the
    same inputs give bit-identical outputs, and an op without a
    deterministic kernel raises rather than run); on exit the process's
    previous setting is back. TensorFlow has no public way to read or undo
    the setting (`normzoo._tf_internals.op_determinism_enabled` and
    `disable_op_determinism`)."""
    if not enabled:
        yield
        return
    import tensorflow as tf  # noqa: PLC0415

    previous = _tf_internals.op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not previous:
            _tf_internals.disable_op_determinism()


def own_function(python_function, **options):
    """`tf.function(python_function, **options)` for a function that each
    object (a layer, a training run) makes for itself and traces once.
    TensorFlow counts the traces of every tf.function of one Python function
    together: a model's fifth BatchNorm, or the fifth short run of an
    experiment in one process, would log "triggered tf.function retracing"
    though nothing retraces. Such a function omits that warning, as
    TensorFlow's own restored functions do (a private attribute:
    `normzoo._tf_internals.omit_frequent_tracing_warning`; the tests fail
    if it stops working)."""
    import tensorflow as tf  # noqa: PLC0415

    return _tf_internals.omit_frequent_tracing_warning(tf.function(python_function, **options))
