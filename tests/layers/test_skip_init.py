"""normzoo.layers.SkipInit against its formula, y = alpha * x."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo.layers import SkipInit


def test_alpha_is_one_float32_scalar_initialized_to_zero():
    layer = SkipInit()
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype("float32")
    y = layer(x)
    assert layer.alpha.shape == () and layer.alpha.dtype == "float32"
    assert layer.alpha.trainable and len(layer.trainable_variables) == 1
    np.testing.assert_array_equal(y, np.zeros_like(x))


def test_output_is_alpha_times_input_and_alpha_gradient_is_their_inner_product():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5)).astype("float32")
    upstream = rng.normal(size=(3, 5)).astype("float32")
    layer = SkipInit(initial_alpha=0.25)
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_allclose(y, 0.25 * x, rtol=1e-7)
    np.testing.assert_allclose(tape.gradient(loss, layer.alpha), np.sum(upstream * x), rtol=1e-5)


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_keeps_float32_alpha_and_outputs_compute_dtype(policy, compute_dtype):
    layer = SkipInit(initial_alpha=0.5, dtype=policy)
    x = np.linspace(-4, 4, 12, dtype="float32").reshape(3, 4).astype(compute_dtype)
    y = layer(x)
    assert layer.alpha.dtype == "float32"
    assert y.dtype == compute_dtype
    np.testing.assert_array_equal(np.asarray(y, dtype="float32"), 0.5 * x.astype("float32"))


def test_keras_file_round_trip_keeps_alpha_and_config(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, SkipInit(initial_alpha=1.0, name="gain")(inputs))
    model.get_layer("gain").alpha.assign(0.3)
    path = tmp_path / "gain.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("gain"), SkipInit)
    assert loaded.get_layer("gain").get_config()["initial_alpha"] == 1.0
    x = np.arange(8, dtype="float32").reshape(2, 4)
    np.testing.assert_array_equal(loaded(x), model(x))
    np.testing.assert_allclose(loaded(x), 0.3 * x, rtol=1e-6)
