"""normzoo.bn: audit, freeze, recalibrate (Precise BN) and fold, each against
an independent reference: NumPy statistics over the whole dataset for
recalibrate, the original model's outputs for fold."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo import bn, layers, models

SHAPE = (32, 32, 3)


@pytest.fixture(autouse=True)
def _seeded():
    # Kernels keep their initializers' values: the same ones in every run.
    keras.utils.set_random_seed(0)


def _tiny(name="resnet18", **overrides):
    return models.build(name, input_shape=SHAPE, num_classes=5, **{"width": 4, **overrides})


def _randomize(model, seed=0):
    """Random affine terms and biases, and statistics away from 0 and 1."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        if name == "moving_variance":
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))
        elif name == "gamma":
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        elif name in ("moving_mean", "beta", "bias"):
            variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32"))


def _data(count, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    # A non-zero mean per channel, as real images have.
    return (rng.standard_normal((count, *shape)) + np.arange(shape[-1])).astype("float32")


def _norm_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, layers.BatchNorm)]


# audit ---------------------------------------------------------------------


def test_audit_names_every_batch_norm_of_an_untrained_model():
    model = _tiny()
    problems = bn.audit(model)
    assert [p.layer for p in problems] == _norm_names(model)
    assert {p.problem for p in problems} == {"uninitialized"}


def test_audit_is_clean_for_trained_looking_statistics_and_names_bad_ones():
    model = _tiny()
    _randomize(model)
    assert bn.audit(model) == []

    layer = model.get_layer("conv3_block1_2_bn")
    variance = layer.moving_variance.numpy()
    variance[3] = np.nan
    layer.moving_variance.assign(variance)
    other = model.get_layer("conv4_block2_1_bn")
    other.moving_variance.assign(-other.moving_variance.numpy())
    reset = model.get_layer("conv5_block1_0_bn")
    reset.moving_mean.assign(np.zeros(reset.moving_mean.shape))
    reset.moving_variance.assign(np.ones(reset.moving_variance.shape))

    assert [str(problem) for problem in bn.audit(model)] == [
        "conv3_block1_2_bn: non-finite",
        "conv4_block2_1_bn: negative variance",
        "conv5_block1_0_bn: uninitialized",
    ]


def test_audit_reads_keras_batch_normalization_too():
    inputs = keras.Input((4, 4, 2))
    outputs = keras.layers.BatchNormalization(name="keras_bn")(keras.layers.Conv2D(3, 1)(inputs))
    assert [str(p) for p in bn.audit(keras.Model(inputs, outputs))] == ["keras_bn: uninitialized"]


# freeze --------------------------------------------------------------------


def _train_step(model, seed=0):
    images = _data(8, seed=seed)
    labels = np.arange(8) % 5
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))


def _snapshot(model, suffixes):
    return {v.path: v.numpy().copy() for v in model.weights if v.path.endswith(suffixes)}


@pytest.mark.parametrize("gamma_beta", [False, True])
def test_freeze_keeps_statistics_through_training(gamma_beta):
    model = _tiny()
    _randomize(model)
    statistics = _snapshot(model, ("moving_mean", "moving_variance"))
    affine = _snapshot(model, ("gamma", "beta"))
    kernels = _snapshot(model, ("kernel",))

    frozen = bn.freeze(model, gamma_beta=gamma_beta)
    _train_step(model)

    assert frozen == _norm_names(model)
    assert all(model.get_layer(name).frozen_stats for name in frozen)
    for path, value in statistics.items():
        np.testing.assert_array_equal(_snapshot(model, (path,))[path], value, path)
    affine_after = _snapshot(model, ("gamma", "beta"))
    affine_changed = [
        path for path in affine if not np.array_equal(affine_after[path], affine[path])
    ]
    assert (not affine_changed) if gamma_beta else len(affine_changed) == len(affine)
    kernels_after = _snapshot(model, ("kernel",))
    assert all(not np.array_equal(kernels_after[path], kernels[path]) for path in kernels)


def test_without_freeze_training_moves_the_statistics():
    # The contrast that makes the freeze test meaningful.
    model = _tiny()
    _randomize(model)
    statistics = _snapshot(model, ("moving_mean", "moving_variance"))
    _train_step(model)
    after = _snapshot(model, ("moving_mean", "moving_variance"))
    assert all(not np.array_equal(after[path], statistics[path]) for path in statistics)


def test_freeze_refuses_keras_batch_normalization_naming_convert():
    inputs = keras.Input((4, 4, 2))
    outputs = keras.layers.BatchNormalization(name="keras_bn")(inputs)
    with pytest.raises(TypeError, match="keras_bn is keras.layers.BatchNormalization") as error:
        bn.freeze(keras.Model(inputs, outputs))
    assert "model = normzoo.bn.convert(model)" in str(error.value)


# recalibrate ---------------------------------------------------------------


def _two_norm_model():
    """1x1 conv -> BatchNorm -> ReLU -> 1x1 conv -> BatchNorm -> pool -> dense:
    small enough to compute in NumPy."""
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(6, 1, name="conv_a")(inputs)
    x = layers.BatchNorm(epsilon=1e-3, name="bn_a")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 1, name="conv_b")(x)
    x = layers.BatchNorm(epsilon=1e-3, name="bn_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def _numpy_population_statistics(model, batches):
    """What Precise BN estimates, computed directly: each BatchNorm's input
    in a training-mode forward pass (earlier BatchNorms normalizing with
    their batch's statistics), concatenated over all batches, then its mean
    and biased variance per channel."""
    w_a, b_a = (w.astype(np.float64) for w in model.get_layer("conv_a").get_weights())
    w_b, b_b = (w.astype(np.float64) for w in model.get_layer("conv_b").get_weights())
    bn_a = model.get_layer("bn_a")
    gamma, beta = bn_a.gamma.numpy(), bn_a.beta.numpy()
    inputs_a, inputs_b = [], []
    for images in batches:
        a = images.astype(np.float64) @ w_a[0, 0] + b_a
        normalized = (a - a.mean((0, 1, 2))) / np.sqrt(a.var((0, 1, 2)) + bn_a.epsilon)
        b = np.maximum(gamma * normalized + beta, 0.0) @ w_b[0, 0] + b_b
        inputs_a.append(a.reshape(-1, a.shape[-1]))
        inputs_b.append(b.reshape(-1, b.shape[-1]))
    return {
        name: (np.concatenate(values).mean(0), np.concatenate(values).var(0))
        for name, values in (("bn_a", inputs_a), ("bn_b", inputs_b))
    }


def _assert_statistics(model, expected):
    for name, (mean, variance) in expected.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-5)


def test_recalibrate_sets_the_exact_statistics_of_the_whole_dataset():
    model = _two_norm_model()
    _randomize(model)
    model.get_layer("bn_b").frozen_stats = True  # recalibrated all the same
    data = _data(11, shape=(4, 4, 3))
    batches = [data[0:4], data[4:8], data[8:11]]  # sizes 4, 4, 3: weighted by size
    others = {v.path: v.numpy().copy() for v in model.weights if "moving" not in v.path}

    examples = bn.recalibrate(model, tf.data.Dataset.from_tensor_slices(data).batch(4), None)

    assert examples == 11
    expected = _numpy_population_statistics(model, batches)
    for name, (mean, variance) in expected.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-5)
    for variable in model.weights:
        if variable.path in others:
            np.testing.assert_array_equal(variable.numpy(), others[variable.path], variable.path)
    assert model.get_layer("bn_b").frozen_stats and not model.get_layer("bn_a").frozen_stats


@pytest.mark.parametrize("in_scope", [True, False], ids=["in_scope", "outside_scope"])
def test_recalibrate_a_model_of_a_mirrored_strategy_sets_every_replica(mirrored_strategy, in_scope):
    """A model built in a MirroredStrategy's scope (per-replica moving
    statistics) is recalibrated from cross-replica code: every replica's copy
    holds the exact statistics of the whole dataset."""
    with mirrored_strategy.scope():
        model = _two_norm_model()
    _randomize(model)
    data = _data(11, shape=(4, 4, 3))
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)

    if in_scope:
        with mirrored_strategy.scope():
            bn.recalibrate(model, dataset)
    else:
        bn.recalibrate(model, dataset)

    expected = _numpy_population_statistics(model, [data[0:4], data[4:8], data[8:11]])
    for name, (mean, variance) in expected.items():
        layer = model.get_layer(name)
        copies = [(m.numpy(), v.numpy()) for m, v in zip(
            layer.moving_mean.value.values, layer.moving_variance.value.values, strict=True
        )]
        assert len(copies) == mirrored_strategy.num_replicas_in_sync == 2
        for replica_mean, replica_variance in copies:
            np.testing.assert_allclose(replica_mean, mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(replica_variance, variance, rtol=1e-5)


def test_recalibrate_inside_strategy_run_is_refused_naming_the_fix(mirrored_strategy):
    with mirrored_strategy.scope():
        model = _two_norm_model()
    before = [v.numpy().copy() for v in model.weights]
    dataset = tf.data.Dataset.from_tensor_slices(_data(4, shape=(4, 4, 3))).batch(4)
    with pytest.raises(RuntimeError, match="outside strategy.run"):
        mirrored_strategy.run(lambda: bn.recalibrate(model, dataset))
    for variable, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_recalibrate_is_not_the_mean_of_batch_variances():
    # The pooled variance includes the spread of the batch means; the plain
    # average of per-batch variances (a common shortcut) does not.
    model = _two_norm_model()
    _randomize(model)
    conv = model.get_layer("conv_a")
    # Positive weights: the shift below moves every channel's batch mean.
    conv.kernel.assign(np.random.default_rng(0).uniform(0.5, 1.5, conv.kernel.shape))
    data = _data(12, shape=(4, 4, 3))
    data[6:] += 3.0  # batches with different means
    bn.recalibrate(model, [data[0:6], data[6:12]], 2)
    a = model.get_layer("bn_a").moving_variance.numpy()
    w, b = model.get_layer("conv_a").get_weights()
    features = [(batch @ w[0, 0] + b).reshape(-1, 6) for batch in (data[0:6], data[6:12])]
    mean_of_variances = np.mean([f.var(0) for f in features], axis=0)
    np.testing.assert_allclose(a, np.concatenate(features).var(0), rtol=1e-5)
    # ...and in every channel the two differ by far more than that tolerance.
    assert ((a - mean_of_variances) / a > 1e-2).all()


def test_recalibrate_uses_num_batches_of_a_repeated_dataset_and_checks_the_length():
    model = _two_norm_model()
    _randomize(model)
    data = _data(8, shape=(4, 4, 3))
    dataset = tf.data.Dataset.from_tensor_slices((data, np.zeros(8))).batch(4).repeat()

    assert bn.recalibrate(model, dataset, num_batches=2) == 8
    mean = model.get_layer("bn_a").moving_mean.numpy()
    bn.recalibrate(model, [data[:4], data[4:]], num_batches=2)
    np.testing.assert_allclose(model.get_layer("bn_a").moving_mean.numpy(), mean, rtol=1e-6)

    before = model.get_layer("bn_a").moving_mean.numpy()
    with pytest.raises(ValueError, match="ended after 2 batch"):
        bn.recalibrate(model, [data[:4], data[4:]], num_batches=3)
    np.testing.assert_array_equal(model.get_layer("bn_a").moving_mean.numpy(), before)


def test_recalibrate_first_norm_of_a_zoo_model_equals_numpy_over_the_data():
    model = _tiny()
    _randomize(model)
    data = _data(12)
    stem = keras.Model(model.input, model.get_layer("conv1_conv").output)

    bn.recalibrate(model, tf.data.Dataset.from_tensor_slices(data).batch(5), None)

    features = stem(data, training=False).numpy().astype(np.float64).reshape(-1, 4)
    layer = model.get_layer("conv1_bn")
    np.testing.assert_allclose(layer.moving_mean.numpy(), features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), features.var(0), rtol=1e-5)
    assert bn.audit(model) == []


def test_recalibrate_leaves_dropout_random_state_and_weights_unchanged():
    model = models.build("wrn_10_1", input_shape=(8, 8, 3), num_classes=5, dropout_rate=0.3)
    _randomize(model)
    before = {v.path: v.numpy().copy() for v in model.variables if "moving" not in v.path}
    assert any("seed" in path for path in before)  # the random state is a variable

    bn.recalibrate(model, [_data(4, shape=(8, 8, 3))], 1)

    for variable in model.variables:
        if variable.path in before:
            np.testing.assert_array_equal(variable.numpy(), before[variable.path], variable.path)


def test_recalibrate_a_model_with_a_single_batch_norm():
    # Its one output used to come back as a bare tensor, not a list.
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(5, 1, name="conv")(inputs)
    outputs = layers.BatchNorm(name="only_bn")(x)
    model = keras.Model(inputs, outputs)
    data = _data(6, shape=(4, 4, 3))

    bn.recalibrate(model, [data[:3], data[3:]])

    w, b = model.get_layer("conv").get_weights()
    features = (data.astype(np.float64) @ w[0, 0] + b).reshape(-1, 5)
    _assert_statistics(model, {"only_bn": (features.mean(0), features.var(0))})


@pytest.mark.parametrize("norm", ["normzoo", "keras"])
def test_recalibrate_reaches_the_batch_norms_of_a_nested_backbone(norm):
    """Keras' transfer-learning pattern: a backbone called with
    training=False inside a classifier. Its BatchNorms are recalibrated
    all the same, each normalizing with its batch's statistics."""
    backbone = _two_norm_model()
    if norm == "keras":
        backbone = _with_keras_batch_normalization(backbone)
    _randomize(backbone)
    features = keras.Model(backbone.input, backbone.get_layer("bn_b").output, name="backbone")
    features.trainable = False
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.GlobalAveragePooling2D()(features(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    data = _data(11, shape=(4, 4, 3))

    assert bn.recalibrate(model, tf.data.Dataset.from_tensor_slices(data).batch(4)) == 11

    expected = _numpy_population_statistics(backbone, [data[:4], data[4:8], data[8:]])
    _assert_statistics(backbone, expected)
    assert not any(layer.trainable for layer in features.layers)


def _with_keras_batch_normalization(model):
    """`model` with keras.layers.BatchNormalization in place of BatchNorm."""

    def clone(layer):
        if isinstance(layer, layers.BatchNorm):
            config = {k: v for k, v in layer.get_config().items() if k != "frozen_stats"}
            return keras.layers.BatchNormalization.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def test_recalibrate_pools_the_inputs_of_a_batch_norm_called_twice():
    inputs = keras.Input((4, 4, 3))
    shared = layers.BatchNorm(name="shared_bn")
    conv = keras.layers.Conv2D(3, 1, name="conv")
    outputs = keras.layers.Add()([shared(inputs), shared(conv(inputs))])
    model = keras.Model(inputs, outputs)
    data = _data(5, shape=(4, 4, 3))

    bn.recalibrate(model, [data])

    w, b = conv.get_weights()
    rows = np.concatenate([data, data.astype(np.float64) @ w[0, 0] + b]).reshape(-1, 3)
    _assert_statistics(model, {"shared_bn": (rows.mean(0), rows.var(0))})


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_recalibrate_splits_an_array_into_batches_of_batch_size(kind):
    data = _data(11, shape=(4, 4, 3))
    examples = data if kind == "numpy" else tf.constant(data)
    model = _two_norm_model()
    _randomize(model)

    assert bn.recalibrate(model, examples, batch_size=4) == 11
    _assert_statistics(model, _numpy_population_statistics(model, [data[:4], data[4:8], data[8:]]))

    # By default 32 examples a batch, as Keras' Model.predict: here one batch.
    assert bn.recalibrate(model, examples) == 11
    _assert_statistics(model, _numpy_population_statistics(model, [data]))


def test_recalibrate_takes_generators_and_keras_py_datasets():
    data = _data(10, shape=(4, 4, 3))
    batches = [data[:4], data[4:8], data[8:]]
    model = _two_norm_model()
    _randomize(model)
    expected = _numpy_population_statistics(model, batches)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            return batches[index], np.zeros(len(batches[index]))

    for dataset in ((batch for batch in batches), Batches()):
        _randomize(model)
        assert bn.recalibrate(model, dataset) == 10
        _assert_statistics(model, expected)


def test_recalibrate_names_what_it_accepts():
    model = _two_norm_model()
    before = [v.numpy().copy() for v in model.weights]
    data = _data(4, shape=(4, 4, 3))
    with pytest.raises(TypeError, match="NumPy array or tensor of examples, or an iterable"):
        bn.recalibrate(model, 3)
    with pytest.raises(ValueError, match="iterable of batches already"):
        bn.recalibrate(model, [data], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        bn.recalibrate(model, data, batch_size=0)
    with pytest.raises(TypeError, match="holds a str, not an array or tensor"):
        bn.recalibrate(model, ["images"])
    for variable, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


# fold ----------------------------------------------------------------------


def _calibrated(name, seed=0, **overrides):
    """A zoo model with random weights whose statistics are those of its own
    features (recalibrated), so that its logits have a realistic scale."""
    model = _tiny(name, **overrides)
    _randomize(model, seed)
    bn.recalibrate(model, [_data(16, seed=seed)], 1)
    return model


@pytest.mark.parametrize("name", ["resnet18", "resnet50v2"])
def test_fold_outputs_equal_the_original_model(name):
    model = _calibrated(name, width=8)
    inputs = _data(4, seed=1)
    expected = model(inputs, training=False).numpy()

    folded = bn.fold(model)

    # Every norm that follows a convolution is folded; v2's pre-activation
    # norms follow additions and stay.
    remaining = [layer.name for layer in folded.layers if isinstance(layer, layers.BatchNorm)]
    unfoldable = [n for n in _norm_names(model) if n.endswith("_preact_bn") or n == "post_bn"]
    assert remaining == unfoldable
    assert bool(unfoldable) == name.endswith("v2")
    outputs = folded(inputs, training=False).numpy()
    scale = np.abs(expected).max()
    assert np.abs(outputs - expected).max() <= 1e-4 * max(scale, 1.0)


def test_folded_model_is_a_copy(monkeypatch):
    inputs = _data(2, seed=1)
    calibrated = _calibrated("resnet18").get_weights()

    def calibrated_model():
        model = _tiny()
        model.set_weights(calibrated)
        return model

    def assert_fold_leaves_the_original_as_it_was():
        model = calibrated_model()
        before = model(inputs, training=False).numpy()
        bn.fold(model)
        np.testing.assert_array_equal(model(inputs, training=False).numpy(), before)

    def assert_later_changes_do_not_reach_the_copy():
        model = calibrated_model()
        folded = bn.fold(model)
        expected = folded(inputs, training=False).numpy()
        original = model(inputs, training=False).numpy()
        # Every variable changes: statistics, affine terms, biases, and the
        # kernels, which fold rewrites.
        _randomize(model, seed=5)
        for variable in model.weights:
            if variable.path.endswith("kernel"):
                variable.assign(-variable)
        assert not np.allclose(model(inputs, training=False).numpy(), original)
        np.testing.assert_array_equal(folded(inputs, training=False).numpy(), expected)

    assert_fold_leaves_the_original_as_it_was()
    assert_later_changes_do_not_reach_the_copy()

    # Each check fails for the broken fold it is meant to catch.
    fold, fold_weights = bn.fold, bn._fold_weights

    def fold_in_place(conv, norm):  # writes the folded kernel into the original
        weights = fold_weights(conv, norm)
        conv.kernel.assign(weights[0])
        return weights

    def fold_sharing_kernels(model):  # the copy uses the original's kernels
        folded = fold(model)
        for layer in folded.layers:
            if isinstance(layer, keras.layers.Conv2D):
                kernel = layer.kernel.numpy()
                # Past Keras' tracking, which forbids new variables once built.
                object.__setattr__(layer, "_kernel", model.get_layer(layer.name).kernel)
                layer.kernel.assign(kernel)
        return folded

    with monkeypatch.context() as broken:
        broken.setattr(bn, "_fold_weights", fold_in_place)
        with pytest.raises(AssertionError, match="not equal"):
            assert_fold_leaves_the_original_as_it_was()
    with monkeypatch.context() as broken:
        broken.setattr(bn, "fold", fold_sharing_kernels)
        with pytest.raises(AssertionError, match="not equal"):
            assert_later_changes_do_not_reach_the_copy()


def test_fold_keeps_a_batch_norm_after_an_activated_convolution():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(3, 1, activation="relu", name="activated")(inputs)
    x = layers.BatchNorm(name="after_relu")(x)
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="plain")(x)
    outputs = layers.BatchNorm(name="after_plain")(x)
    model = keras.Model(inputs, outputs)
    _randomize(model)

    folded = bn.fold(model)

    assert [type(folded.get_layer(name)).__name__ for name in ("after_relu", "after_plain")] == [
        "BatchNorm",
        "Identity",
    ]
    assert folded.get_layer("plain").use_bias
    data = _data(2, shape=(4, 4, 3))
    np.testing.assert_allclose(
        folded(data, training=False).numpy(),
        model(data, training=False).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("norm_class", [layers.BatchNorm, keras.layers.BatchNormalization])
def test_fold_folds_a_batch_norm_that_takes_a_mask(norm_class):
    """Both layers take `mask`, so a functional model records their calls
    with it; the Identity that replaces a folded one must be called without
    (with Keras' layer, fold raised "unexpected keyword argument 'mask'")."""
    inputs = keras.Input((6, 6, 2))
    outputs = norm_class(name="bn")(keras.layers.Conv2D(3, 3, name="conv")(inputs))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights(
        [rng.uniform(0.5, 2.0, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2.0, 3)]
    )
    folded = bn.fold(model)
    assert [type(layer).__name__ for layer in folded.layers] == ["InputLayer", "Conv2D", "Identity"]
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(folded(x), model(x, training=False), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("container", ["functional", "sequential"])
@pytest.mark.parametrize("norm", ["normzoo", "keras"])
def test_fold_folds_the_batch_norms_of_a_nested_backbone(norm, container):
    norm_class = layers.BatchNorm if norm == "normzoo" else keras.layers.BatchNormalization
    body = [
        keras.layers.Conv2D(4, 3, padding="same", name="conv_a"),
        norm_class(name="bn_a"),
        keras.layers.ReLU(name="relu"),
        keras.layers.Conv2D(3, 1, use_bias=False, name="conv_b"),
        norm_class(name="bn_b"),
    ]
    if container == "sequential":
        backbone = keras.Sequential([keras.Input((6, 6, 3)), *body], name="backbone")
    else:
        backbone_inputs = keras.Input((6, 6, 3))
        x = backbone_inputs
        for layer in body:
            x = layer(x)
        backbone = keras.Model(backbone_inputs, x, name="backbone")
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _randomize(model)

    folded = bn.fold(model)

    folded_backbone = folded.get_layer("backbone")
    assert [type(layer).__name__ for layer in folded_backbone.layers[-5:]] == [
        "Conv2D", "Identity", "ReLU", "Conv2D", "Identity"
    ]
    data = _data(3, shape=(6, 6, 3))
    np.testing.assert_allclose(
        folded(data, training=False).numpy(),
        model(data, training=False).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_recalibrate_sets_every_statistic_of_a_renorm_layer_consistently():
    """Batch Renormalization keeps a moving stddev beside the moving variance
    and rebuilds the variance from it at each update: recalibrate must set
    it (and the statistics r and d start from) to the population values, or
    the next training step brings the stale variance back."""
    inputs = keras.Input((3,))
    norm = layers.BatchNorm(renorm=True, momentum=1.0, renorm_momentum=1.0, name="bn")
    model = keras.Model(inputs, norm(inputs))
    data = np.random.default_rng(0).normal([5.0, -2.0, 0.5], [3.0, 0.1, 1.0], (64, 3))
    data = data.astype("float32")

    bn.recalibrate(model, data, batch_size=16)

    mean, variance = data.astype(np.float64).mean(0), data.astype(np.float64).var(0)
    np.testing.assert_allclose(norm.moving_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(), variance, rtol=1e-5)
    stddev = np.sqrt(variance + norm.epsilon)
    for statistic in (norm.moving_stddev, norm.renorm_stddev):
        np.testing.assert_allclose(statistic.numpy(), stddev, rtol=1e-5)
    np.testing.assert_allclose(norm.renorm_mean.numpy(), mean, rtol=1e-5)
    # momentum=1: a training step keeps every statistic where it is.
    model(data[:16], training=True)
    np.testing.assert_allclose(norm.moving_variance.numpy(), variance, rtol=1e-5)
