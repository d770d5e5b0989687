"""The private TensorFlow APIs normzoo uses, each in one small function.

TensorFlow has no public way to do what these do; each function names the
internal it wraps and the version it was checked against (TF 2.21), and
nothing else in normzoo touches TensorFlow's internals
(tests/test_architecture.py holds the code to that). When TensorFlow
changes one, this file is the one to fix.

Importing this module does not import TensorFlow; each function does when
called, so modules that every backend imports (`normzoo.runtime`) may
import this one.
"""


def mkl_enabled():
    """Whether TensorFlow runs its oneDNN (formerly MKL) CPU kernels in this
    process: what it decided from TF_ENABLE_ONEDNN_OPTS and the CPU (TF
    2.21: `tensorflow.python.util._pywrap_util_port.IsMklEnabled`).

    Raises:
        ImportError, AttributeError: a TensorFlow without that binding.
    """
    from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415

    return bool(_pywrap_util_port.IsMklEnabled())


def op_determinism_enabled():
    """Whether `tf.config.experimental.enable_op_determinism` is in effect;
    TensorFlow exports no reader (TF 2.21:
    `tensorflow.python.framework.config.is_op_determinism_enabled`)."""
    from tensorflow.python.framework import config  # noqa: PLC0415

    return config.is_op_determinism_enabled()


def disable_op_determinism():
    """Undoes `tf.config.experimental.enable_op_determinism`; TensorFlow
    exports no way back (TF 2.21:
    `tensorflow.python.framework.config.disable_op_determinism`)."""
    from tensorflow.python.framework import config  # noqa: PLC0415

    config.disable_op_determinism()


def omit_frequent_tracing_warning(function):
    """Keeps the `tf.function` `function` out of TensorFlow's "triggered
    tf.function retracing" warning, as TensorFlow's own restored functions
    are (TF 2.21: the attribute `_omit_frequent_tracing_warning`); returns
    `function`."""
    function._omit_frequent_tracing_warning = True
    return function


def is_default_strategy(strategy):
    """Whether `strategy` is TensorFlow's default strategy (one device, no
    `tf.distribute` scope); tf.distribute exports no name for its class
    (TF 2.21: `tensorflow.python.distribute.distribute_lib._DefaultDistributionStrategy`)."""
    from tensorflow.python.distribute import distribute_lib  # noqa: PLC0415

    return isinstance(strategy, distribute_lib._DefaultDistributionStrategy)


def uses_merge_call(strategy):
    """Whether the mirrored `strategy`'s collectives go through
    `merge_call` (on CPU they always do, and `merge_call` fails inside a
    function XLA compiles whole); no public accessor (TF 2.21:
    `strategy.extended._use_merge_call()`)."""
    return strategy.extended._use_merge_call()


def compiled_whole(graph):
    """Whether `graph`, or a graph it is nested in, is compiled by XLA as a
    whole (`jit_compile=True`, or a TPU computation); not a `jit_scope`. No
    public equivalent (TF 2.21:
    `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext`)."""
    from tensorflow.python.ops import control_flow_util  # noqa: PLC0415

    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def jit_scope_compile_ops(graph):
    """The `compile_ops` of the `tf.xla.experimental.jit_scope` that ops
    created now in `graph` are in: the scope marks them with the attribute
    "_XlaCompile"; None outside any scope, or where a callable decides op
    by op. No public accessor (TF 2.21: `tf.Graph._attr_scope_map`)."""
    compile_ops = graph._attr_scope_map.get("_XlaCompile")
    return getattr(compile_ops, "b", None)


def call_with_run_metadata(function, *args):
    """`(function(*args), the RunMetadata of that call)`: the graphs it
    ran, partitioned as they were executed. No public API (TF 2.21: the
    run-metadata methods of `tensorflow.python.eager.context.context()`)."""
    from tensorflow.python.eager import context as eager_context  # noqa: PLC0415

    context = eager_context.context()
    context.enable_run_metadata()
    try:
        return function(*args), context.export_run_metadata()
    finally:
        context.disable_run_metadata()
