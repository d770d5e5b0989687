"""The Keras backend of this process, and the guard of the features that
only TensorFlow provides.

Keras fixes its backend when it is first imported (KERAS_BACKEND, or
~/.keras/keras.json), so it is read once here. The core of normzoo
(layers, models, the `bn` tools, restoring Keras files) runs on every
backend; `tf.distribute` training, synchronized BatchNorm, TFDS input
pipelines and TensorFlow checkpoints run on TensorFlow only, and say so
through `require_tensorflow`.
"""

import importlib.util


class BackendError(RuntimeError):
    """A TensorFlow-only feature was used under another Keras backend or
    without TensorFlow, or Keras' backend is not installed."""


# Keras imports its backend's framework when it is first imported: in a
# JAX-only install without KERAS_BACKEND=jax that is TensorFlow (Keras'
# default), which is not there.
_EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "jaxlib": "jax", "torch": "torch"}
try:
    import keras
except ModuleNotFoundError as error:
    missing = (error.name or "").split(".")[0]
    if missing not in _EXTRAS:
        raise
    raise BackendError(
        f"Keras cannot start: its backend needs {missing!r}, which is not installed. Choose "
        f"the backend you installed with KERAS_BACKEND (jax, torch or tensorflow), set before "
        f"Keras is first imported, or install this one: pip install "
        f"\"normzoo[{_EXTRAS[missing]}]\"."
    ) from error

BACKEND = keras.backend.backend()
TENSORFLOW = BACKEND == "tensorflow"


def require_tensorflow(feature):
    """Raises `BackendError` naming `feature` unless Keras runs on TensorFlow."""
    if not TENSORFLOW:
        raise BackendError(
            f"{feature} needs Keras' TensorFlow backend; this process runs Keras on "
            f"{BACKEND!r}. Run it with KERAS_BACKEND=tensorflow (TensorFlow installed), "
            f"set before Keras is first imported."
        )


def require_installed_tensorflow(feature):
    """Raises `BackendError` naming `feature` where TensorFlow cannot be
    imported (it is not installed): the guard of the TensorFlow-only
    packages (`normzoo.data`, `normzoo.training`), which import TensorFlow
    when they are imported. With TensorFlow installed they import on any
    backend, and their functions call `require_tensorflow`."""
    try:
        installed = importlib.util.find_spec("tensorflow") is not None
    except ImportError:
        installed = False
    if not installed:
        raise BackendError(
            f"{feature} needs TensorFlow, which cannot be imported here (this process runs "
            f"Keras on {BACKEND!r}). Install normzoo's TensorFlow stack with "
            f"pip install \"normzoo[tensorflow]\" (TensorFlow, TFDS, TensorBoard, "
            f"scikit-learn) and run with KERAS_BACKEND=tensorflow, set before Keras is first "
            f"imported."
        )
