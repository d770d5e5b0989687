"""The Keras backend of this process, and the guard of the features that
only TensorFlow provides.

Keras fixes its backend when it is first imported (KERAS_BACKEND, or
~/.keras/keras.json), so it is read once here. The core of normzoo
(layers, models, the `bn` tools, restoring Keras files) runs on every
backend; `tf.distribute` training, synchronized BatchNorm, TFDS input
pipelines and TensorFlow checkpoints run on TensorFlow only, and say so
through `require_tensorflow`.
"""

import keras

BACKEND = keras.backend.backend()
TENSORFLOW = BACKEND == "tensorflow"


class BackendError(RuntimeError):
    """A TensorFlow-only feature was used under another Keras backend."""


def require_tensorflow(feature):
    """Raises `BackendError` naming `feature` unless Keras runs on TensorFlow."""
    if not TENSORFLOW:
        raise BackendError(
            f"{feature} needs Keras' TensorFlow backend; this process runs Keras on "
            f"{BACKEND!r}. Run it with KERAS_BACKEND=tensorflow (TensorFlow installed), "
            f"set before Keras is first imported."
        )
