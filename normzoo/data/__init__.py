"""Data through tensorflow-datasets: any TFDS image-classification dataset, one pipeline.

    info = normzoo.data.info("digits", image_size=32)
    dataset = normzoo.data.load("digits", "train", global_batch_size=128, training=True,
                                image_size=32)

`load` builds the input pipeline (augmentation, normalization, per-replica
batches, sharding by input pipeline); `info` says what the training loop
needs (classes, image shape, split sizes, the evaluation split);
`prepared_builder` checks that a dataset is prepared without ever
downloading it. Importing this package registers the embedded default
dataset, scikit-learn's handwritten digits, with TFDS as "digits"
(`Digits`), so `tfds.load("digits")` works too.
"""

from normzoo import backends

# Before anything imports TensorFlow: where it is not installed (a JAX
# environment), the error is normzoo's BackendError, not an ImportError.
backends.require_installed_tensorflow("normzoo.data (tf.data and TFDS input pipelines)")

from normzoo.data import preprocessing
from normzoo.data.digits import Digits
from normzoo.data.pipeline import (
    DataInfo,
    DatasetNotPreparedError,
    evaluation_steps,
    info,
    load,
    num_examples,
    prepared_builder,
)

__all__ = [
    "DataInfo",
    "DatasetNotPreparedError",
    "Digits",
    "evaluation_steps",
    "info",
    "load",
    "num_examples",
    "prepared_builder",
    "preprocessing",
]
