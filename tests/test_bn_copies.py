"""The models `normzoo.bn.convert` and `normzoo.bn.fold` return own their
variables, on every backend: training, predicting or recalibrating either
the copy or the original never changes or invalidates the other, whichever
is used first. (Their docstrings promise it.)

Backend-agnostic: it runs here on TensorFlow and, through
tests/test_backends.py, on JAX, where Keras' trainer donates (deletes) the
arrays of the model it trains, so a copy that shared its original's arrays
left the original with deleted buffers.
"""

import keras
import numpy as np
import pytest

from normzoo import bn

INPUT_SHAPE = (6, 6, 3)


def _model():
    """Conv -> BatchNorm (folded by `fold`) -> ReLU -> BatchNorm (kept by
    `fold`: it follows an activation) -> pooling -> Dense, with trained-
    looking statistics."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(INPUT_SHAPE)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.BatchNormalization(name="post_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="classifier")(x), name="net")
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, 4).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, 4).astype("float32"))
    return model


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, *INPUT_SHAPE)).astype("float32"), rng.integers(0, 3, 8)


def _values(model):
    """Every variable's value, copied to NumPy (reading a deleted array raises)."""
    return [np.array(keras.ops.convert_to_numpy(variable)) for variable in model.variables]


def _use(model, images, labels):
    """Trains `model` for one epoch (compiled, as `fit` runs by default),
    predicts with it and recalibrates its statistics."""
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    model.predict(images, verbose=0)
    bn.recalibrate(model, images, batch_size=4)


def _assert_unchanged(model, values, outputs, images, who):
    for variable, before, now in zip(model.variables, values, _values(model), strict=True):
        np.testing.assert_array_equal(now, before, err_msg=f"{who}: {variable.path}")
    np.testing.assert_array_equal(model.predict(images, verbose=0), outputs, err_msg=who)


@pytest.mark.parametrize("copier", ["convert", "fold"])
@pytest.mark.parametrize("first", ["copy", "original"])
def test_using_the_copy_or_the_original_never_touches_the_other(copier, first):
    images, labels = _data()
    original = _model()
    copy = getattr(bn, copier)(original)
    models = {"copy": copy, "original": original}
    second = "original" if first == "copy" else "copy"
    values = {name: _values(model) for name, model in models.items()}
    outputs = {name: model.predict(images, verbose=0) for name, model in models.items()}

    _use(models[first], images, labels)
    # Something changed in the model used (else this test proves nothing).
    assert any(
        not np.array_equal(a, b) for a, b in zip(_values(models[first]), values[first])
    ), f"{first} did not change"
    _assert_unchanged(models[second], values[second], outputs[second], images, second)

    after_first = _values(models[first])
    first_outputs = models[first].predict(images, verbose=0)
    _use(models[second], images, labels)
    _assert_unchanged(models[first], after_first, first_outputs, images, first)
