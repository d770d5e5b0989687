"""normzoo: normalization in residual networks, for Keras 3 (TensorFlow or JAX).

    model = normzoo.models.build("wrn_28_10", norm="skipinit", num_classes=10)
    model = normzoo.build("resnet50", weights="resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    normzoo.bn.freeze(model)

`normzoo.build` is `normzoo.models.build` plus `weights=`: a model in a
checkpoint's architecture, with every variable restored from it.

How the code is organized
-------------------------

Each package has one job, and imports run one way: down this list (top
level first), from a level to the levels below it, never up and never
across one level. No import hides inside a function to get around this:
tests/test_architecture.py parses every import and holds the code to it.

    __main__.py          `python -m normzoo`: lists the commands, runs one
    commands/            the console scripts normzoo-train and
                         normzoo-finetune (scripts/*.py run the same)
    training/            the training loop behind the commands:
                         strategies, XLA step forms, fine-tuning from a
                         checkpoint (TensorFlow-only)
    checkpoints/         reading every checkpoint format into one `Source`,
                         restoring it all or nothing, `normzoo.build`, and
                         the checkpoints shipped with normzoo (_shipped/)
    bn.py                BatchNorm tools for trained models: audit, freeze,
                         recalibrate, fold, convert
    models/              the residual zoo: blocks written once, one file
                         per family, the registry (`models.build`)
    layers/              BatchNorm, LayerNorm, SkipInit (TensorFlow-only
                         kernels in `_fused.py`, `_distributed_moments.py`)
    data/                TFDS datasets through one input pipeline
    naming.py            the layer-name rules that builders write and
                         checkpoint readers parse
    _keras_graph.py      walking and rebuilding any Keras model
    runtime.py           facts about the running TensorFlow (oneDNN)
    backends.py          the Keras backend of the process, and the error
                         of the TensorFlow-only features on another one
    _tf_internals.py     the private TensorFlow and Keras APIs normzoo
    _keras_internals.py  uses, each wrapped once (nothing else imports
                         them; TensorFlow is imported on first use)

The levels, bottom first: _tf_internals, _keras_internals; naming,
runtime, _keras_graph, backends; layers, data; models; checkpoints, bn;
training; commands; this file; __main__
(`import normzoo` gives layers, models, bn, checkpoints, and data on first
use: it is TensorFlow's input pipeline, and `import normzoo` needs no
TensorFlow). The measuring apparatus (benchmarks, experiments, analyses)
is the lab, lab/ in the repository: it imports normzoo, never the
reverse, and is not installed. A private Keras or TensorFlow API is used
only where no public one exists, in one small function of
_keras_internals.py or _tf_internals.py whose docstring names the version
it was checked against (Keras 3.15.1, TF 2.21).
"""

__version__ = "0.1.0"

import importlib  # noqa: E402

# First: in an install without Keras' backend, the error says what to do.
from normzoo import backends  # noqa: E402,F401
from normzoo import layers  # noqa: E402,F401
from normzoo import models  # noqa: E402,F401
from normzoo import bn, checkpoints  # noqa: E402,F401
from normzoo.checkpoints.build import build  # noqa: E402,F401


def __getattr__(name):
    # `normzoo.data` (tf.data and TFDS) is imported when first used, so that
    # normzoo runs on Keras' other backends without TensorFlow installed.
    if name == "data":
        return importlib.import_module("normzoo.data")
    raise AttributeError(f"module 'normzoo' has no attribute {name!r}")
