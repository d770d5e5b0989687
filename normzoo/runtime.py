"""Facts about the TensorFlow running in this process, for the records that
training runs (`flags.json`) and benchmarks keep."""


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (what it
    decided from TF_ENABLE_ONEDNN_OPTS and the CPU; None if unknown).

    TensorFlow exposes the decision only through a private binding (TF 2.21:
    `tensorflow.python.util._pywrap_util_port.IsMklEnabled`); another
    version without it gives None rather than an error.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None
