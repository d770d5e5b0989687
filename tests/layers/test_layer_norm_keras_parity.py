"""normzoo.layers.LayerNorm as a drop-in superset of keras.layers.LayerNormalization:
masking, rms_scaling, config and axes, weight files, argument errors, each
compared with Keras' layer (identical weights) and with NumPy in float64."""

import warnings

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from normzoo.layers import LayerNorm, LayerNormalization


def sequences(shape=(3, 6, 4), seed=0):
    return np.random.default_rng(seed).normal(1.5, 2.0, shape).astype("float32")


def randomize(layer, seed=0):
    """Random non-trivial values for every weight of `layer`."""
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(0.5, 2.0, w.shape).astype(w.dtype) for w in layer.get_weights()])


def keras_twin(ours):
    """Keras' LayerNormalization with `ours`' config (less param_axis) and weights."""
    config = {k: v for k, v in ours.get_config().items() if k != "param_axis"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rms_scaling's deprecation
        theirs = keras.layers.LayerNormalization.from_config(config)
    return theirs


def numpy_layer_norm(x, axes, counted, gamma, beta, epsilon, rms_scaling=False):
    """Float64 reference: statistics over the `counted` elements of each group."""
    x = x.astype(np.float64)
    counted = np.broadcast_to(counted, x.shape)
    count = counted.sum(axis=axes, keepdims=True)
    counted = counted | (count == 0)  # a group with nothing counted counts everything
    count = counted.sum(axis=axes, keepdims=True)
    mean = np.where(counted, x, 0).sum(axis=axes, keepdims=True) / count
    variance = np.where(counted, (x - mean) ** 2, 0).sum(axis=axes, keepdims=True) / count
    y = (x if rms_scaling else x - mean) / np.sqrt(variance + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


# Masking ------------------------------------------------------------------


def masked_sequence_model(norm):
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True, name="embedding")(tokens)
    x = norm(name="norm")(x)
    return keras.Model(tokens, keras.layers.LSTM(5, name="lstm")(x))


def test_masked_sequence_model_ignores_padding_exactly_like_keras():
    keras.utils.set_random_seed(0)
    theirs = masked_sequence_model(keras.layers.LayerNormalization)
    ours = masked_sequence_model(LayerNorm)
    randomize(theirs.get_layer("norm"))
    ours.set_weights(theirs.get_weights())
    unpadded = np.array([[3, 5, 2, 7], [4, 1, 9, 6]], "int32")
    padded = np.array([[3, 5, 2, 7, 0, 0], [4, 1, 9, 6, 0, 0]], "int32")

    for model in (ours, theirs):
        np.testing.assert_allclose(model(padded), model(unpadded), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours(padded), theirs(padded), rtol=1e-6, atol=1e-6)


def test_sequence_model_normalizing_over_time_ignores_padding():
    """With axis=(1, 2) the statistics of a sequence are taken over its
    unmasked steps (Keras' layer would include the padded ones), here in a
    compiled `predict` on symbolic shapes of unknown length."""
    keras.utils.set_random_seed(0)
    model = masked_sequence_model(lambda name: LayerNorm(axis=(1, 2), param_axis=-1, name=name))
    unpadded = np.array([[3, 5, 2, 7], [4, 1, 9, 6]], "int32")
    padded = np.array([[3, 5, 2, 7, 0, 0], [4, 1, 9, 6, 0, 0]], "int32")
    np.testing.assert_allclose(model.predict(padded, verbose=0), model(unpadded), rtol=0, atol=1e-6)


def test_mask_is_passed_on_unchanged():
    x = sequences()
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], bool)
    for layer in (LayerNorm(), LayerNorm(axis=(1, 2)), keras.layers.LayerNormalization()):
        assert layer.supports_masking
        np.testing.assert_array_equal(layer.compute_mask(x, mask), mask)


def test_mask_over_feature_axis_only_gives_keras_output_everywhere_including_padding():
    """With axis=-1 every time step is its own group: a (batch, time) mask
    leaves the statistics unchanged, padded steps included, as in Keras."""
    x = sequences()
    x[0, 3:] = 0.0  # padded steps hold zeros, a constant group
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], bool)
    ours = LayerNorm(epsilon=1e-4)
    ours.build(x.shape)
    randomize(ours)
    theirs = keras_twin(ours)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x, mask=mask), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rms_scaling", [False, True])
@pytest.mark.parametrize("param_axis", [None, -1])
def test_masked_time_steps_leave_the_statistics_when_axis_includes_time(param_axis, rms_scaling):
    x = sequences()
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
    x[0, 3:] = 1e3  # padding far from the data must not matter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layer = LayerNorm(axis=(1, 2), param_axis=param_axis, epsilon=1e-4, rms_scaling=rms_scaling)
    layer.build(x.shape)
    randomize(layer)
    gamma = layer.gamma.numpy()
    beta = None if layer.beta is None else layer.beta.numpy()
    expected = numpy_layer_norm(x, (1, 2), mask[..., None], gamma, beta, 1e-4, rms_scaling)
    y = np.asarray(layer(x, mask=mask))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(y).all()  # the fully masked sample is normalized without the mask

    # A padded sequence's unmasked steps equal those of the same sequence unpadded,
    # when gamma and beta do not vary along time.
    if param_axis == -1:
        np.testing.assert_allclose(y[0, :3], np.asarray(layer(x[:1, :3]))[0], rtol=1e-5, atol=1e-5)


def test_elementwise_mask_over_features_matches_numpy():
    x = sequences()
    mask = np.random.default_rng(3).uniform(size=x.shape) > 0.4
    mask[0, 0] = False  # a step with no unmasked feature
    layer = LayerNorm()
    layer.build(x.shape)
    randomize(layer)
    expected = numpy_layer_norm(x, (2,), mask, layer.gamma.numpy(), layer.beta.numpy(), 1e-3)
    np.testing.assert_allclose(layer(x, mask=mask), expected, rtol=1e-5, atol=1e-5)


def test_masked_statistics_are_accurate_when_mean_dwarfs_std():
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.normal(size=(2, 64, 8))).astype("float32")
    mask = np.ones((2, 64), bool)
    mask[:, 40:] = False
    x[:, 40:] = 0.0
    y = np.asarray(LayerNorm(axis=(1, 2), epsilon=1e-12)(x, mask=mask))
    np.testing.assert_allclose(y[:, :40].std(axis=(1, 2)), 1.0, rtol=0.01)


def test_mask_that_does_not_fit_the_inputs_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit inputs of shape"):
        LayerNorm(axis=(1, 2))(sequences(), mask=np.ones((3, 5), bool))


def test_gradients_reach_only_through_unmasked_statistics():
    """Changing padded values changes no output at unmasked steps: nor does it
    change the gradient there."""
    x = sequences()
    other = x.copy()
    other[0, 3:] = -50.0
    mask = np.array([[1, 1, 1, 0, 0, 0]] * 3, bool)
    layer = LayerNorm(axis=(1, 2))
    gradients = []
    for inputs in (x, other):
        inputs = tf.constant(inputs)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs, mask=mask)[:, :3] ** 3)
        gradients.append(tape.gradient(loss, inputs).numpy()[:, :3])
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-5, atol=1e-5)


# rms_scaling ---------------------------------------------------------------


def test_rms_scaling_warns_like_keras_and_points_to_rms_normalization():
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        keras.layers.LayerNormalization(rms_scaling=True)
    with pytest.warns(UserWarning, match=r"keras\.layers\.RMSNormalization") as ours:
        LayerNorm(rms_scaling=True)
    assert [w.category for w in ours] == [w.category for w in theirs] == [UserWarning]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerNorm()  # no warning without rms_scaling


# Keras' layer warns again on every call (from keras.ops.layer_normalization).
KERAS_CALL_WARNING = "ignore:You passed `rms_scaling=True`:UserWarning"


@pytest.mark.filterwarnings(KERAS_CALL_WARNING)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"center": False},
        {"scale": False},
        {"center": False, "scale": False},
        {"axis": [1, 2], "epsilon": 1e-5},
        {"axis": (-1, -2), "epsilon": 0.5},
    ],
)
def test_rms_scaling_reproduces_keras_numbers_and_weights(kwargs):
    x = sequences()
    with pytest.warns(UserWarning):
        ours = LayerNorm(rms_scaling=True, **kwargs)
    ours.build(x.shape)
    randomize(ours)
    theirs = keras_twin(ours)
    theirs.build(x.shape)
    # gamma always, beta never, whatever center and scale say.
    assert [(w.name, w.shape) for w in ours.weights] == [(w.name, w.shape) for w in theirs.weights]
    assert [w.name for w in ours.weights] == ["gamma"]
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)

    axes = tuple(a % 3 for a in ours.axis)
    expected = numpy_layer_norm(
        x, axes, np.ones(x.shape, bool), ours.gamma.numpy(), None, ours.epsilon, rms_scaling=True
    )
    np.testing.assert_allclose(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_rms_scaling_is_not_root_mean_square_normalization():
    """The reason Keras deprecates it: unless the mean is zero it differs from
    keras.layers.RMSNormalization."""
    x = sequences()
    with pytest.warns(UserWarning):
        ours = LayerNorm(rms_scaling=True, epsilon=1e-6)
    rms = keras.layers.RMSNormalization(epsilon=1e-6)
    assert not np.allclose(ours(x), rms(x), rtol=0.01)
    centered = x - x.mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(ours(centered), rms(centered), rtol=1e-4, atol=1e-4)


# Config and axes -------------------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 2, (1, 2), [2, 1], (-1, -2), [-1, 1]])
def test_axis_is_kept_and_canonicalized_as_keras_does(axis):
    ours = LayerNorm(axis=axis)
    theirs = keras.layers.LayerNormalization(axis=axis)
    assert ours.get_config()["axis"] == theirs.get_config()["axis"]
    assert type(ours.get_config()["axis"]) is type(theirs.get_config()["axis"])
    ours.build((2, 3, 4))
    theirs.build((2, 3, 4))
    assert ours.get_config()["axis"] == theirs.get_config()["axis"]
    assert ours.axis == theirs.axis


def test_config_equals_keras_config_plus_param_axis():
    kwargs = dict(
        axis=(1, 2), epsilon=1e-5, center=False, gamma_regularizer="l2",
        beta_constraint="non_neg", gamma_initializer="he_normal", name="norm",
    )
    ours = LayerNorm(**kwargs)
    theirs = keras.layers.LayerNormalization(**kwargs)
    for built in (False, True):
        if built:
            ours.build((2, 3, 4))
            theirs.build((2, 3, 4))
        config = ours.get_config()
        assert config.pop("param_axis") is None
        assert config == theirs.get_config()


@pytest.mark.filterwarnings(KERAS_CALL_WARNING)
@pytest.mark.parametrize(
    "kwargs, policy",
    [
        ({}, "float32"),
        ({"center": False}, "float32"),
        ({"scale": False}, "float32"),
        ({"center": False, "scale": False}, "float32"),
        ({"axis": [1, 2]}, "float32"),
        ({"axis": (-2, -1), "epsilon": 1e-6}, "float32"),
        ({"axis": [-3, -1], "epsilon": 0.1}, "float32"),
        ({"rms_scaling": True, "axis": [1, 2]}, "float32"),
        ({}, "mixed_float16"),
        ({"axis": [2, 3]}, "mixed_bfloat16"),
        ({"axis": [1, 3]}, "float64"),
    ],
)
def test_layer_from_keras_config_with_keras_weights_gives_keras_outputs(kwargs, policy):
    shape = (3, 5, 6, 4)
    x = sequences(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        theirs = keras.layers.LayerNormalization(dtype=policy, **kwargs)
        theirs.build(shape)
        randomize(theirs)
        ours = LayerNorm.from_config(theirs.get_config())
    ours.build(shape)
    assert [(w.name, w.shape, w.dtype) for w in ours.weights] == [
        (w.name, w.shape, w.dtype) for w in theirs.weights
    ]
    ours.set_weights(theirs.get_weights())
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype
    # Both round float32 (float64) results equal to 1e-6 to the compute dtype:
    # at most one unit in the last place apart, i.e. within its epsilon relatively.
    resolution = float(ml_dtypes.finfo(keras.backend.standardize_dtype(y_theirs.dtype)).eps)
    np.testing.assert_allclose(
        np.asarray(y_ours, "float64"),
        np.asarray(y_theirs, "float64"),
        rtol=max(resolution, 1e-5),
        atol=1e-5,
    )


def test_positional_arguments_follow_keras_order():
    assert LayerNorm(-2, 1e-5, False).get_config() | {"name": "x"} == {
        **keras.layers.LayerNormalization(-2, 1e-5, False).get_config(),
        "name": "x",
        "param_axis": None,
    }


def test_built_layer_accepts_inputs_of_other_ranks_like_keras():
    ours = LayerNorm()
    ours.build((2, 3, 4))
    randomize(ours)
    theirs = keras_twin(ours)
    theirs.build((2, 3, 4))
    theirs.set_weights(ours.get_weights())
    for shape in [(2, 4), (2, 3, 4), (2, 5, 6, 4), (1, 0, 4)]:
        x = sequences(shape)
        np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="was built with gamma/beta of shape"):
        ours(sequences((2, 5)))


def test_empty_axis_is_accepted_like_keras():
    x = np.zeros((1, 0, 10), "float32")
    assert LayerNorm()(x).shape == keras.layers.LayerNormalization()(x).shape == (1, 0, 10)


def model_with_norms(norm):
    """Two norm layers at the top level (one without beta) and one inside a
    nested model, as in the Keras transfer-learning pattern."""
    inner_inputs = keras.Input((5, 4))
    inner = keras.Model(
        inner_inputs, norm(axis=[1, 2])(keras.layers.Dense(4)(inner_inputs)), name="backbone"
    )
    inputs = keras.Input((5, 4))
    x = norm(center=False)(inner(inputs))
    x = keras.layers.Dense(3)(x)
    return keras.Model(inputs, norm(epsilon=1e-5)(x))


def test_weights_files_load_both_ways_with_the_layer_under_keras_class_name(tmp_path):
    keras.utils.set_random_seed(1)
    theirs = model_with_norms(keras.layers.LayerNormalization)
    rng = np.random.default_rng(0)
    for weight in theirs.weights:
        weight.assign(rng.uniform(0.5, 2.0, weight.shape))
    theirs.save_weights(tmp_path / "keras.weights.h5")

    # Keras keys a layer's variables by its class name: LayerNorm's are not
    # found in Keras' file, LayerNormalization's are.
    with pytest.raises(ValueError):
        model_with_norms(LayerNorm).load_weights(tmp_path / "keras.weights.h5")
    ours = model_with_norms(LayerNormalization)
    ours.load_weights(tmp_path / "keras.weights.h5")
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = sequences((2, 5, 4))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)

    # And back: Keras' layer reads the file our layer writes.
    for weight in ours.weights:
        weight.assign(rng.uniform(0.5, 2.0, weight.shape))
    ours.save_weights(tmp_path / "ours.weights.h5")
    theirs.load_weights(tmp_path / "ours.weights.h5")
    np.testing.assert_allclose(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


# Invalid arguments -------------------------------------------------------------


def error_of(function):
    try:
        function()
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return error
    raise AssertionError("no error raised")


@pytest.mark.parametrize("axis", [{"axis": -1}, 1.5, None, "features", ("a",), [1, "2"]])
def test_an_axis_that_is_not_an_int_or_list_of_ints_is_a_type_error_as_in_keras(axis):
    theirs = error_of(lambda: keras.layers.LayerNormalization(axis=axis).build((2, 3, 4)))
    assert isinstance(theirs, TypeError)
    with pytest.raises(TypeError, match="must be an int or a list/tuple of ints"):
        LayerNorm(axis=axis)
    if axis is not None:  # param_axis=None means "as axis"
        with pytest.raises(TypeError, match="param_axis"):
            LayerNorm(param_axis=axis)


@pytest.mark.parametrize("axis", [2, 99, -3, (1, 99)])
@pytest.mark.parametrize("how", ["build", "call", "symbolic"])
def test_an_axis_out_of_range_raises_what_keras_raises(axis, how):
    def apply(layer):
        if how == "build":
            layer.build((2, 4))
        elif how == "call":
            layer(np.zeros((2, 4), "float32"))
        else:
            layer(keras.Input((4,)))

    theirs = error_of(lambda: apply(keras.layers.LayerNormalization(axis=axis)))
    ours = error_of(lambda: apply(LayerNorm(axis=axis)))
    assert isinstance(ours, type(theirs)), (ours, theirs)
    assert isinstance(ours, ValueError)  # what later Keras versions raise
    assert "out of range for an input of rank 2" in str(ours)
