"""normzoo.bn.convert: Keras models with normzoo's normalization layers, each
compared against the Keras model it was converted from (outputs in inference
and training, moving statistics after a training step, layer configurations,
variables), and the bn tools applied to the result."""

import keras
import numpy as np
import pytest

from normzoo import bn, checkpoints, layers
from normzoo._keras_graph import leaf_layers


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


def _randomize_norms(model, seed=0):
    """Gamma, beta and moving statistics of every normalization layer set to
    random values away from their initial ones."""
    rng = np.random.default_rng(seed)
    for layer in leaf_layers(model):
        for variable in layer.weights:
            name = variable.name
            if name == "moving_variance":
                variable.assign(rng.uniform(0.5, 2.0, variable.shape))
            elif name == "gamma":
                variable.assign(rng.uniform(0.5, 1.5, variable.shape))
            elif name in ("moving_mean", "beta"):
                variable.assign(rng.normal(0.0, 0.5, variable.shape))


def _norm_pairs(original, converted):
    """(Keras layer, its replacement) for every normalization layer."""
    pairs = [
        (layer, copy)
        for layer, copy in zip(leaf_layers(original), leaf_layers(converted), strict=True)
        if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))
    ]
    assert pairs
    return pairs


def _assert_close(actual, expected, relative):
    """Every output within `relative` times the largest expected magnitude."""
    for got, want in zip(keras.tree.flatten(actual), keras.tree.flatten(expected), strict=True):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert got.shape == want.shape
        scale = max(np.abs(want).max(), 1.0)
        assert np.abs(got - want).max() <= relative * scale, np.abs(got - want).max() / scale


def _assert_same_statistics(pairs, relative=1e-5):
    for keras_layer, ours in pairs:
        for name in ("moving_mean", "moving_variance"):
            expected = getattr(keras_layer, name).numpy()
            scale = max(np.abs(expected).max(), 1.0)
            np.testing.assert_allclose(
                getattr(ours, name).numpy(), expected, rtol=0, atol=relative * scale,
                err_msg=f"{ours.name}/{name}",
            )


# keras.applications --------------------------------------------------------

# Measured here (Keras 3.15.1, TF 2.21 CPU, 8 random 32x32 images, random
# statistics), as a fraction of the largest output magnitude: in inference,
# Keras' own float32 outputs are within 6.2e-7 of the same model's in
# float64, and ours within 5.6e-7 of Keras'. In training mode the deepest
# BatchNorms see 8 values per channel (1x1 maps): some channels' batch
# variance is small against epsilon, which amplifies rounding; Keras' float32
# outputs are then up to 2.3e-4 off the float64 model's (ResNet50), and ours
# within 2.0e-4 of Keras'. The bounds leave 18x and 5x.
INFERENCE_TOLERANCE = 1e-5
TRAINING_TOLERANCE = 1e-3


@pytest.mark.parametrize(
    "name", ["ResNet50", "ResNet50V2", "MobileNetV2", "EfficientNetB0", "DenseNet121"]
)
def test_converted_application_computes_what_keras_computes(name):
    original = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    _randomize_norms(original)
    images = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")

    converted = bn.convert(original)

    pairs = _norm_pairs(original, converted)
    assert all(isinstance(ours, layers.BatchNorm) for _, ours in pairs)
    assert [ours.name for _, ours in pairs] == [keras_layer.name for keras_layer, _ in pairs]
    assert bn.audit(converted) == []
    _assert_close(
        converted(images, training=False), original(images, training=False), INFERENCE_TOLERANCE
    )
    # Training mode: batch statistics, and one update of the moving ones.
    _assert_close(
        converted(images, training=True), original(images, training=True), TRAINING_TOLERANCE
    )
    _assert_same_statistics(pairs)


# Layer configurations ------------------------------------------------------


def _settings_model():
    """One keras.layers.BatchNormalization per group of settings."""
    inputs = keras.Input((6, 6, 4), name="images")
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    norms = [
        keras.layers.BatchNormalization(name="defaults"),
        keras.layers.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-2, name="axis_1"),
        keras.layers.BatchNormalization(center=False, scale=False, name="no_affine"),
        keras.layers.BatchNormalization(
            beta_initializer=keras.initializers.RandomNormal(seed=1),
            gamma_initializer="he_uniform",
            moving_mean_initializer=keras.initializers.Constant(0.5),
            moving_variance_initializer=keras.initializers.Constant(2.0),
            beta_regularizer="l2",
            gamma_regularizer=keras.regularizers.L1(0.01),
            beta_constraint="non_neg",
            gamma_constraint=keras.constraints.MaxNorm(2.0),
            name="settings",
        ),
        frozen,
        keras.layers.BatchNormalization(synchronized=True, name="synchronized"),
    ]
    x = inputs
    for norm in norms:
        x = norm(x)
    x = keras.layers.Dense(5, name="dense")(keras.layers.Flatten()(x))
    outputs = {
        "dense": keras.layers.BatchNormalization(momentum=0.5, name="dense_bn")(x),
        # float16 outputs, compared to float16's resolution.
        "mixed": keras.layers.BatchNormalization(dtype="mixed_float16", name="mixed")(inputs),
    }
    return keras.Model(inputs, outputs, name="settings_model")


def _assert_settings_model_outputs_close(converted, original, images, training):
    got, want = converted(images, training=training), original(images, training=training)
    assert got["mixed"].dtype == want["mixed"].dtype == "float16"
    _assert_close(got["dense"], want["dense"], 1e-5)
    _assert_close(got["mixed"], want["mixed"], 2.0**-10)


def test_converted_layers_have_the_keras_configuration_variables_and_flags():
    original = _settings_model()
    _randomize_norms(original)
    images = np.random.default_rng(1).normal(2.0, 3.0, (4, 6, 6, 4)).astype("float32")

    converted = bn.convert(original)

    for keras_layer, ours in _norm_pairs(original, converted):
        keras_config, our_config = keras_layer.get_config(), ours.get_config()
        assert {key: our_config.get(key) for key in keras_config} == keras_config, ours.name
        assert ours.trainable == keras_layer.trainable
        assert ours.dtype_policy.name == keras_layer.dtype_policy.name
        assert [v.name for v in ours.variables] == [v.name for v in keras_layer.variables]
        for variable, keras_variable in zip(ours.variables, keras_layer.variables):
            np.testing.assert_array_equal(variable.numpy(), keras_variable.numpy())
            assert variable.trainable == keras_variable.trainable
    np.testing.assert_allclose(sum(converted.losses), sum(original.losses), rtol=1e-6)
    for training in (False, True):
        _assert_settings_model_outputs_close(converted, original, images, training)
    _assert_same_statistics(_norm_pairs(original, converted))


def test_converted_renorm_layer_computes_what_keras_computes():
    inputs = keras.Input((5,))
    outputs = keras.layers.BatchNormalization(
        renorm=True,
        renorm_clipping={"rmax": 1.5, "rmin": 0.5, "dmax": 0.5},
        renorm_momentum=0.9,
        name="renorm",
    )(keras.layers.Dense(4)(inputs))
    original = keras.Model(inputs, outputs)
    data = np.random.default_rng(1).normal(1.0, 2.0, (16, 5)).astype("float32")
    original(data[:8], training=True)  # renorm statistics away from their initial values

    converted = bn.convert(original)

    (keras_layer, ours), = _norm_pairs(original, converted)
    assert ours.get_config()["renorm_clipping"] == keras_layer.get_config()["renorm_clipping"]
    for variable, keras_variable in zip(ours.variables, keras_layer.variables, strict=True):
        assert variable.name == keras_variable.name
        np.testing.assert_array_equal(variable.numpy(), keras_variable.numpy())
    _assert_close(converted(data, training=False), original(data, training=False), 1e-5)
    _assert_close(converted(data, training=True), original(data, training=True), 1e-5)
    _assert_same_statistics([(keras_layer, ours)])


def test_converted_batch_norm_keeps_keras_masking():
    """Embedding(mask_zero=True) -> BatchNormalization: padded time steps
    take no part in the batch statistics; the converted model's padded
    outputs equal Keras' in training mode (with the mask dropped they would
    not)."""
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(10, 3, mask_zero=True)(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    original = keras.Model(inputs, keras.layers.LSTM(2)(x))
    tokens = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 0]], "int32")

    converted = bn.convert(original)

    _assert_close(converted(tokens, training=True), original(tokens, training=True), 1e-5)
    _assert_same_statistics(_norm_pairs(original, converted))


# Model structure -----------------------------------------------------------


def test_convert_a_sequential_model():
    original = keras.Sequential(
        [
            keras.Input((8,), name="features"),
            keras.layers.Dense(6, name="dense_1"),
            keras.layers.BatchNormalization(momentum=0.8, name="bn_1"),
            keras.layers.ReLU(),
            keras.layers.Dense(3, name="dense_2"),
            keras.layers.BatchNormalization(center=False, name="bn_2"),
        ],
        name="sequential_model",
    )
    _randomize_norms(original)
    data = np.random.default_rng(1).normal(size=(5, 8)).astype("float32")

    converted = bn.convert(original)

    assert type(converted) is keras.Sequential and converted.name == "sequential_model"
    assert [layer.name for layer in converted.layers] == [layer.name for layer in original.layers]
    assert all(isinstance(converted.get_layer(n), layers.BatchNorm) for n in ("bn_1", "bn_2"))
    _assert_close(converted(data, training=False), original(data, training=False), 1e-5)
    _assert_close(converted(data, training=True), original(data, training=True), 1e-5)
    _assert_same_statistics(_norm_pairs(original, converted))


def _transfer_learning_model():
    """The Keras transfer-learning guide's model: a frozen pretrained
    backbone called in inference mode, and a new classifier."""
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    _randomize_norms(base)
    base.trainable = False
    inputs = keras.Input((32, 32, 3), name="images")
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="classifier")(x), name="transfer")


@pytest.fixture(scope="module")
def transfer_learning():
    """(original, converted): built and converted once for the module; the
    tests that use it do not change either."""
    keras.utils.set_random_seed(0)
    original = _transfer_learning_model()
    return original, bn.convert(original)


def _trainable_flags(model):
    flags = {model.name: model.trainable}
    for layer in model.layers:
        flags.update(_trainable_flags(layer) if isinstance(layer, keras.Model) else {})
        flags[layer.name] = layer.trainable
    return flags


def test_convert_a_nested_backbone_of_the_transfer_learning_pattern(transfer_learning):
    original, converted = transfer_learning
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")

    base = converted.get_layer(original.layers[1].name)
    assert isinstance(base, keras.Model) and base is not original.layers[1]
    assert [layer.name for layer in converted.layers] == [layer.name for layer in original.layers]
    assert all(isinstance(ours, layers.BatchNorm) for _, ours in _norm_pairs(original, converted))
    assert _trainable_flags(converted) == _trainable_flags(original)
    assert not base.trainable and converted.get_layer("classifier").trainable
    assert len(converted.trainable_weights) == len(original.trainable_weights) == 2
    # The backbone is called with training=False in both: it stays in
    # inference mode when the classifier trains.
    for training in (False, True):
        _assert_close(
            converted(images, training=training), original(images, training=training), 1e-5
        )


def test_weights_files_load_both_ways_between_the_original_and_the_converted_model(
    transfer_learning, tmp_path
):
    original, converted = transfer_learning
    path = str(tmp_path / "original.weights.h5")
    original.save_weights(path)
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = original(images, training=False)

    # Fresh copies: every variable at a new initial value.
    by_restore = keras.models.clone_model(converted, recursive=True)
    assert bn.audit(by_restore)  # initial statistics
    report = checkpoints.restore(by_restore, path)
    assert len(report.restored) == len(by_restore.weights)
    _assert_close(by_restore(images, training=False), expected, 1e-5)

    # Keras keys layers by class name in this file; the converted layers
    # carry Keras' class names, so Keras' own loader finds them.
    by_keras = keras.models.clone_model(converted, recursive=True)
    by_keras.load_weights(path)
    _assert_close(by_keras(images, training=False), expected, 1e-5)

    # And back: the original reads the converted model's file.
    _randomize_norms(by_keras, seed=3)
    by_keras.save_weights(str(tmp_path / "converted.weights.h5"))
    back = keras.models.clone_model(original, recursive=True)
    back.load_weights(str(tmp_path / "converted.weights.h5"))
    _assert_close(back(images, training=False), by_keras(images, training=False), 1e-5)


def test_convert_a_two_input_model_with_shared_layers():
    image_a = keras.Input((4, 4, 3), name="image_a")
    image_b = keras.Input((4, 4, 3), name="image_b")
    conv = keras.layers.Conv2D(5, 1, name="shared_conv")
    shared_norm = keras.layers.BatchNormalization(name="shared_bn")
    a = shared_norm(conv(image_a))
    b = shared_norm(conv(image_b))
    merged = keras.layers.Concatenate(name="concat")([a, b])
    merged = keras.layers.BatchNormalization(name="merged_bn")(merged)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(merged)
    original = keras.Model(
        {"image_a": image_a, "image_b": image_b},
        [keras.layers.Dense(2, name="logits")(pooled), pooled],
    )
    _randomize_norms(original)
    rng = np.random.default_rng(1)
    data = {key: rng.normal(size=(3, 4, 4, 3)).astype("float32") for key in ("image_a", "image_b")}

    converted = bn.convert(original)

    assert [layer.name for layer in converted.layers] == [layer.name for layer in original.layers]
    assert [tensor.name for tensor in converted.inputs] == ["image_a", "image_b"]
    # One layer used twice, as in the original: one set of variables.
    assert len(converted.weights) == len(original.weights)
    assert isinstance(converted.get_layer("shared_bn"), layers.BatchNorm)
    _assert_close(converted(data, training=False), original(data, training=False), 1e-5)
    _assert_close(converted(data, training=True), original(data, training=True), 1e-5)
    _assert_same_statistics(_norm_pairs(original, converted))


def test_original_is_unchanged_and_shares_no_variable_with_the_copy():
    original = _settings_model()
    _randomize_norms(original)
    before = [variable.numpy().copy() for variable in original.variables]
    images = np.random.default_rng(1).normal(size=(2, 6, 6, 4)).astype("float32")
    outputs = original(images, training=False)

    converted = bn.convert(original)
    _randomize_norms(converted, seed=7)
    converted(images, training=True)  # moves the copy's statistics

    assert not {id(v) for v in original.variables} & {id(v) for v in converted.variables}
    assert not any(isinstance(layer, layers.BatchNorm) for layer in original.layers)
    for variable, value in zip(original.variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    for name, value in original(images, training=False).items():
        np.testing.assert_array_equal(value.numpy(), outputs[name].numpy())


def test_convert_copies_a_model_without_batch_norm_exactly():
    """No BatchNormalization: convert is a faithful copy (names, inputs,
    shared layers, nested frozen models, trainable flags, dropout's random
    state)."""
    inner_inputs = keras.Input((6,), name="inner_features")
    x = keras.layers.Dense(4, name="inner_dense")(inner_inputs)
    x = keras.layers.Dropout(0.5, name="inner_dropout")(x)
    inner = keras.Model(inner_inputs, x, name="inner")
    inner.trainable = False
    inner.get_layer("inner_dense").trainable = True  # a flag below a frozen model
    first = keras.Input((6,))  # unnamed: Keras names it
    second = keras.Input((6,), name="second")
    shared = keras.layers.Dense(6, name="shared")
    x = keras.layers.Add()([inner(shared(first)), inner(shared(second))])
    original = keras.Model([first, second], keras.layers.Dropout(0.3, name="dropout")(x))
    data = [np.random.default_rng(i).normal(size=(3, 6)).astype("float32") for i in (1, 2)]

    converted = bn.convert(original)

    assert [layer.name for layer in converted.layers] == [layer.name for layer in original.layers]
    assert _trainable_flags(converted) == _trainable_flags(original)
    assert len(converted.weights) == len(original.weights)
    np.testing.assert_array_equal(
        converted(data, training=True).numpy(), original(data, training=True).numpy()
    )


# layer_norm=True -----------------------------------------------------------


def _layer_norm_model():
    inputs = keras.Input((5, 4, 3))
    x = keras.layers.LayerNormalization(name="last_axis")(inputs)
    x = keras.layers.LayerNormalization(axis=[1, 2], epsilon=1e-2, name="two_axes")(x)
    x = keras.layers.LayerNormalization(center=False, name="no_beta")(x)
    return keras.Model(inputs, x)


def test_convert_with_layer_norm_replaces_layer_normalization():
    original = _layer_norm_model()
    _randomize_norms(original)
    data = np.random.default_rng(1).normal(1.0, 2.0, (2, 5, 4, 3)).astype("float32")

    converted = bn.convert(original, layer_norm=True)

    for keras_layer, ours in _norm_pairs(original, converted):
        assert type(ours) is layers.LayerNormalization
        np.testing.assert_array_equal(ours.gamma.numpy(), keras_layer.gamma.numpy())
    _assert_close(converted(data), original(data), 1e-5)


def test_convert_keeps_layer_normalization_by_default():
    original = _layer_norm_model()
    _randomize_norms(original)
    data = np.random.default_rng(1).normal(size=(2, 5, 4, 3)).astype("float32")

    converted = bn.convert(original)

    kept = [type(ours) for _, ours in _norm_pairs(original, converted)]
    assert kept == [keras.layers.LayerNormalization] * 3
    np.testing.assert_array_equal(converted(data).numpy(), original(data).numpy())


# What convert refuses ------------------------------------------------------


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)
        self.norm = keras.layers.BatchNormalization(name="inner_bn")

    def call(self, inputs, training=None):
        return self.norm(self.dense(inputs), training=training)


def test_convert_refuses_a_subclassed_model_naming_what_to_do():
    model = _Subclassed(name="custom")
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(TypeError, match="'custom' is a subclassed _Subclassed") as error:
        bn.convert(model)
    assert "Use normzoo.layers.BatchNorm in place of keras.layers.BatchNormalization" in str(
        error.value
    )


def test_convert_refuses_batch_norms_inside_a_nested_subclassed_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _Subclassed(name="custom")(keras.layers.Dense(4)(inputs)))
    with pytest.raises(TypeError, match="inner_bn inside the subclassed model 'custom'"):
        bn.convert(model)


def test_convert_refuses_a_subclass_of_batch_normalization():
    class MyNorm(keras.layers.BatchNormalization):
        pass

    inputs = keras.Input((4,))
    model = keras.Model(inputs, MyNorm(name="my_norm")(inputs))
    with pytest.raises(TypeError, match="'my_norm', a MyNorm \\(a subclass of Keras' layer"):
        bn.convert(model)


# The bn tools on a converted model ------------------------------------------


def _small_keras_classifier():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 1, name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _snapshot(model, names):
    return {v.path: v.numpy().copy() for v in model.weights if v.name in names}


def test_convert_then_freeze_fine_tunes_gamma_and_beta_with_fixed_statistics():
    original = _small_keras_classifier()
    _randomize_norms(original)
    rng = np.random.default_rng(1)
    images = rng.normal(1.0, 2.0, (12, 6, 6, 3)).astype("float32")
    labels = rng.integers(0, 3, 12)

    def fine_tune(model):
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)

    frozen = bn.convert(original)
    assert bn.freeze(frozen) == ["bn_a", "bn_b"]
    statistics = _snapshot(frozen, ("moving_mean", "moving_variance"))
    affine = _snapshot(frozen, ("gamma", "beta"))
    fine_tune(frozen)

    after = _snapshot(frozen, ("moving_mean", "moving_variance"))
    for path, value in statistics.items():
        np.testing.assert_array_equal(after[path], value, path)
    changed = _snapshot(frozen, ("gamma", "beta"))
    assert all(not np.array_equal(changed[path], affine[path]) for path in affine)
    # The contrast: unfrozen, the same fine-tuning moves the statistics.
    unfrozen = bn.convert(original)
    fine_tune(unfrozen)
    moved = _snapshot(unfrozen, ("moving_mean", "moving_variance"))
    assert all(not np.array_equal(moved[path], statistics[path]) for path in statistics)


def test_audit_recalibrate_and_fold_work_on_a_converted_model():
    original = _small_keras_classifier()
    _randomize_norms(original)
    converted = bn.convert(original)
    images = np.random.default_rng(1).normal(1.0, 2.0, (10, 6, 6, 3)).astype("float32")

    assert bn.audit(converted) == bn.audit(original) == []
    # Recalibrated from the same batches, Keras' layers and ours get the
    # same statistics.
    assert bn.recalibrate(converted, images, batch_size=4) == 10
    bn.recalibrate(original, images, batch_size=4)
    _assert_same_statistics(_norm_pairs(original, converted))
    folded = bn.fold(converted)
    assert [type(folded.get_layer(name)) for name in ("bn_a", "bn_b")] == [
        keras.layers.Identity
    ] * 2
    _assert_close(folded(images, training=False), converted(images, training=False), 1e-5)
