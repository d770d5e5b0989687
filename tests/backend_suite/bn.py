"""normzoo.bn on Keras' JAX and PyTorch backends: audit, convert, freeze,
recalibrate (from a NumPy array and from a generator) and fold, against
Keras' own layer, NumPy statistics over the data and the original model's
outputs.

Imported by tests/jax/test_bn.py and tests/torch/test_bn.py, which define
the fixture the tests take:

- `jit_compile`: the `jit_compile` of the `Model.compile` before a `fit`
  (True on JAX: XLA; Keras' "auto" on PyTorch, which is eager: Inductor
  would take minutes on these CPUs).
"""

import keras
import numpy as np
import pytest

from normzoo import bn, layers, models
from tests.backend_suite import numpy

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tiny(seed=0):
    keras.utils.set_random_seed(seed)
    return models.build("resnet18", input_shape=(16, 16, 3), num_classes=3, width=4)


def data(count, shape=(16, 16, 3), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, *shape)) + np.arange(shape[-1])).astype("float32")


def batch_norms(model):
    return [layer for layer in model.layers if isinstance(layer, layers.BatchNorm)]


def with_statistics(model, seed=1):
    """`model` with random moving statistics in each of its BatchNorm and
    Keras BatchNormalization layers."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (layers.BatchNorm, keras.layers.BatchNormalization)):
            layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype("float32"))
    return model


def test_audit_names_every_batch_norm_of_an_untrained_model():
    model = tiny()
    problems = bn.audit(model)
    assert [p.layer for p in problems] == [layer.name for layer in batch_norms(model)]
    assert {p.problem for p in problems} == {"uninitialized"}


def test_convert_computes_what_keras_batch_normalization_computes():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    original = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.5)(x))
    norm = original.layers[-1]
    rng = np.random.default_rng(2)
    for variable in norm.weights:
        variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))
    converted = bn.convert(original)
    assert isinstance(converted.layers[-1], layers.BatchNorm)
    images = data(4, shape=(6, 6, 3))
    for training in (False, True):
        np.testing.assert_allclose(
            numpy(converted(images, training=training)),
            numpy(original(images, training=training)),
            rtol=1e-5, atol=1e-5, err_msg=f"training={training}",
        )
    # One training call moved both layers' statistics the same way.
    for ours, theirs in zip(converted.layers[-1].non_trainable_variables, norm.non_trainable_variables):
        np.testing.assert_allclose(numpy(ours), numpy(theirs), rtol=1e-5, atol=1e-6)


def normalize_then_convolve():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = layers.BatchNorm(name="first")(inputs)
    x = keras.layers.Conv2D(2, 3)(x)
    return keras.Model(inputs, layers.BatchNorm(name="second")(x))


@pytest.mark.parametrize("kind", ["array", "generator"])
def test_recalibrate_sets_the_statistics_of_the_whole_dataset(kind):
    """The first BatchNorm sees the data itself: its population mean and
    variance over all 11 examples (batches of 4, 4, 3)."""
    model = normalize_then_convolve()
    values = data(11, shape=(4, 4, 3))
    kernels = [numpy(v).copy() for v in model.trainable_variables]
    if kind == "array":
        examples = bn.recalibrate(model, values, batch_size=4)
    else:
        examples = bn.recalibrate(model, (values[i : i + 4] for i in range(0, 11, 4)))
    assert examples == 11
    first = model.get_layer("first")
    x64 = values.astype(np.float64)
    np.testing.assert_allclose(numpy(first.moving_mean), x64.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numpy(first.moving_variance), x64.var((0, 1, 2)), rtol=1e-5)
    for before, after in zip(kernels, model.trainable_variables):
        np.testing.assert_array_equal(numpy(after), before)


def test_freeze_keeps_statistics_through_fit_while_gamma_and_beta_learn(jit_compile):
    model = tiny()
    statistics = {v.path: numpy(v).copy() for v in model.non_trainable_variables}
    affine = {v.path: numpy(v).copy() for v in model.trainable_variables if v.path.endswith(("gamma", "beta"))}
    frozen = bn.freeze(model)
    assert frozen == [layer.name for layer in batch_norms(model)]
    model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=jit_compile)
    model.fit(data(8), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    for variable in model.non_trainable_variables:
        np.testing.assert_array_equal(numpy(variable), statistics[variable.path], variable.path)
    changed = [v.path for v in model.trainable_variables
               if v.path in affine and not np.array_equal(numpy(v), affine[v.path])]
    assert len(changed) == len(affine)


def test_fold_outputs_equal_the_original_model():
    """The folded model's `predict` (compiled where Keras compiles it by
    default: with XLA on JAX) gives the original model's outputs."""
    model = with_statistics(tiny())
    folded = bn.fold(model)
    assert not batch_norms(folded)
    images = data(4)
    expected = numpy(model(images, training=False))
    got = numpy(keras.Model.predict(folded, images, verbose=0))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# What `from tests.backend_suite.bn import *` gives a backend's test file:
# every test above, collected there under its node ids.
__all__ = [name for name in list(globals()) if name.startswith("test_")]
