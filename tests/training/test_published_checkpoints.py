"""Every checkpoint in checkpoints/manifest.json is intact, restores every
variable of its model, and reproduces its recorded test accuracy."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

import normzoo
from normzoo.training import EvalStep, evaluate

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
MANIFEST = json.loads((CHECKPOINTS / "manifest.json").read_text())


def test_manifest_has_a_checkpoint_per_normalization():
    assert {"batch", "layer", "skipinit"} <= {entry["norm"] for entry in MANIFEST}


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_checkpoint_restores_every_variable_and_its_accuracy(entry):
    path = CHECKPOINTS / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    info = normzoo.data.info(entry["dataset"], image_size=entry["image_size"])
    model = normzoo.models.build(
        entry["model"], norm=entry["norm"], num_classes=info.num_classes, input_shape=info.image_shape
    )
    before = [np.array(v.numpy()) for v in model.variables]
    model.load_weights(path)
    with h5py.File(path, "r") as f:
        stored = []
        f.visititems(lambda name, obj: stored.append(name) if isinstance(obj, h5py.Dataset) else None)
    # Every variable is in the file and was changed by loading (none kept its
    # initial value), BatchNorm moving statistics included.
    assert len(stored) == len(model.variables)
    for variable, initial in zip(model.variables, before):
        assert not np.array_equal(variable.numpy(), initial), variable.path
    # The restore report says what the run fed, from the manifest.
    source = normzoo.checkpoints.read(path)
    assert source.preprocess_mode == entry["preprocess_mode"] == "tf"
    assert "manifest.json" in source.preprocessing_origin
    strategy = tf.distribute.get_strategy()
    dataset = strategy.distribute_datasets_from_function(
        lambda context: normzoo.data.load(
            entry["dataset"], info.test_split, global_batch_size=100, training=False,
            image_size=entry["image_size"], input_context=context,
            preprocess_mode=source.preprocess_mode,
        )
    )
    accuracy = evaluate(EvalStep(model, strategy), dataset)["accuracy"]
    # One test image either way covers a prediction on the decision boundary
    # flipping on another CPU's arithmetic.
    assert abs(accuracy - entry["test_accuracy"]) <= 1.0 / info.test_examples + 1e-9
