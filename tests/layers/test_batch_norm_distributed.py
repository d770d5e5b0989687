"""`normzoo.layers.BatchNorm` under tf.distribute.

MirroredStrategy runs on the two logical CPU devices that tests/conftest.py
configures. Every claim is checked against an independent reference: the same
model and weights run on one device on the concatenated global batch, or a
NumPy (float64) formula applied to each replica's shard.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
from normzoo.layers import BatchNorm, _distributed_moments

TOLERANCE = 1e-5
MOMENTUM = 0.9
EPSILON = 1e-3


@pytest.fixture(scope="module")
def strategy(mirrored_strategy):
    return mirrored_strategy


def distribute(strategy, shards):
    """Gives replica `r` the tensor `shards[r]` (shards may differ in size)."""
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(shards[context.replica_id_in_sync_group])
    )


def local_results(strategy, per_replica):
    return [value.numpy() for value in strategy.experimental_local_results(per_replica)]


def replica_copies(variable):
    """The value each replica holds of an on-read or mirrored variable."""
    return [component.numpy() for component in variable.value.values]


def numpy_moments(x, feature_axis):
    """Mean and biased variance per feature, in float64."""
    x = np.asarray(x, np.float64)
    axes = tuple(a for a in range(x.ndim) if a != feature_axis % x.ndim)
    return x.mean(axis=axes), x.var(axis=axes)


def numpy_normalize(x, feature_axis, mean, variance):
    shape = [1] * x.ndim
    shape[feature_axis] = -1
    return (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + EPSILON)


def shifted_shards(sizes, feature_shape, seed):
    """One float32 shard per replica, each with a different mean and scale, so
    that per-replica, unweighted and global statistics all differ."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(loc=3.0 * r - 1.0, scale=1.0 + 2.0 * r, size=(size, *feature_shape)).astype(
            np.float32
        )
        for r, size in enumerate(sizes)
    ]


# --- synchronized=True: equal to one device on the concatenated batch -------


def conv_bn_model(data_format):
    """Conv2D -> synchronized BatchNorm. The CPU convolution only supports
    NHWC, so the NCHW variant permutes the conv output to NCHW and normalizes
    over axis 1."""
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(
        3,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=keras.initializers.GlorotUniform(seed=1),
    )(inputs)
    axis = -1
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2))(x)
        axis = 1
    outputs = BatchNorm(
        axis=axis,
        momentum=MOMENTUM,
        epsilon=EPSILON,
        synchronized=True,
        gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5, seed=2),
        beta_initializer=keras.initializers.RandomNormal(seed=3),
        moving_mean_initializer=keras.initializers.RandomNormal(seed=4),
        moving_variance_initializer=keras.initializers.RandomUniform(0.5, 2.0, seed=5),
    )(x)
    return keras.Model(inputs, outputs)


def squared_error(outputs, targets, global_batch_size):
    # Each sample's mean squared error, summed over this replica's shard and
    # divided by the global batch size: the replicas' losses then sum to the
    # single-device loss. (A per-sample mean keeps the gradients O(1), so the
    # absolute tolerance measures more than float32 rounding of large sums.)
    per_sample = tf.reduce_mean(tf.square(outputs - targets), axis=[1, 2, 3])
    return tf.reduce_sum(per_sample) / global_batch_size


def single_device_step(model, inputs, targets):
    inputs = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = model(inputs, training=True)
        loss = squared_error(outputs, targets, len(inputs))
    gradients = tape.gradient(loss, [inputs, *model.trainable_variables])
    return outputs.numpy(), gradients[0].numpy(), [g.numpy() for g in gradients[1:]]


def distributed_step(strategy, model, input_shards, target_shards):
    """One training step as a custom loop: `strategy.run` in a tf.function,
    weight gradients summed over replicas, input gradients kept per replica."""
    global_batch_size = sum(len(shard) for shard in input_shards)

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = model(inputs, training=True)
            loss = squared_error(outputs, targets, global_batch_size)
        gradients = tape.gradient(loss, [inputs, *model.trainable_variables])
        return outputs, gradients[0], gradients[1:]

    @tf.function
    def step(inputs, targets):
        outputs, input_gradients, weight_gradients = strategy.run(
            replica_step, args=(inputs, targets)
        )
        weight_gradients = [
            strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in weight_gradients
        ]
        return outputs, input_gradients, weight_gradients

    outputs, input_gradients, weight_gradients = step(
        distribute(strategy, input_shards), distribute(strategy, target_shards)
    )
    return (
        np.concatenate(local_results(strategy, outputs)),
        np.concatenate(local_results(strategy, input_gradients)),
        [g.numpy() for g in weight_gradients],
    )


@pytest.mark.parametrize(
    "data_format, shard_sizes",
    [
        ("channels_last", (4, 4)),
        ("channels_first", (4, 4)),
        ("channels_last", (3, 5)),
    ],
)
def test_sync_bn_step_equals_single_device_on_concatenated_batch(
    strategy, data_format, shard_sizes
):
    """Output, gradients (inputs, conv kernel, gamma, beta) and the updated
    moving statistics of one synchronized step on 2 replicas equal one
    single-device step on the concatenated batch; also with unequal shards."""
    input_shards = shifted_shards(shard_sizes, (4, 4, 2), seed=10)
    output_shape = (4, 4, 3) if data_format == "channels_last" else (3, 4, 4)
    target_shards = [
        np.random.default_rng(11 + r).normal(size=(size, *output_shape)).astype(np.float32)
        for r, size in enumerate(shard_sizes)
    ]
    with strategy.scope():
        distributed = conv_bn_model(data_format)
    reference = conv_bn_model(data_format)
    reference.set_weights(distributed.get_weights())

    outputs, input_gradients, weight_gradients = distributed_step(
        strategy, distributed, input_shards, target_shards
    )
    expected_outputs, expected_input_gradients, expected_weight_gradients = single_device_step(
        reference, np.concatenate(input_shards), np.concatenate(target_shards)
    )

    np.testing.assert_allclose(outputs, expected_outputs, atol=TOLERANCE)
    np.testing.assert_allclose(input_gradients, expected_input_gradients, atol=TOLERANCE)
    names = [v.path for v in reference.trainable_variables]
    assert len(weight_gradients) == len(expected_weight_gradients) == 3, names
    for name, gradient, expected in zip(names, weight_gradients, expected_weight_gradients):
        assert np.abs(expected).max() > 1e-3, f"{name}: the reference gradient is ~0"
        np.testing.assert_allclose(gradient, expected, atol=TOLERANCE, err_msg=name)

    layer, reference_layer = distributed.layers[-1], reference.layers[-1]
    for name in ("moving_mean", "moving_variance"):
        expected = getattr(reference_layer, name).numpy()
        np.testing.assert_allclose(getattr(layer, name).numpy(), expected, atol=TOLERANCE)
        for copy in replica_copies(getattr(layer, name)):
            np.testing.assert_allclose(copy, expected, atol=TOLERANCE, err_msg=name)


def run_on_replicas(strategy, layer, shards, training=True):
    """Calls `layer` (built in the strategy's scope) on replica r's shard r."""

    @tf.function
    def step(inputs):
        return strategy.run(lambda x: layer(x, training=training), args=(inputs,))

    return local_results(strategy, step(distribute(strategy, shards)))


def test_sync_bn_weights_unequal_shards_by_count(strategy):
    """With 3 and 5 samples on the two replicas, the batch statistics are those
    of the 8 concatenated samples (NumPy), not an average of shard statistics."""
    shards = shifted_shards((3, 5), (2, 2, 3), seed=20)
    mean, variance = numpy_moments(np.concatenate(shards), -1)
    shard_means = [numpy_moments(shard, -1)[0] for shard in shards]
    # The test could not tell weighting by count from an unweighted average
    # of the shard means if these agreed.
    assert np.abs(np.mean(shard_means, axis=0) - mean).min() > 0.1

    with strategy.scope():
        layer = BatchNorm(momentum=MOMENTUM, epsilon=EPSILON, synchronized=True)
        layer.build((None, 2, 2, 3))
    outputs = run_on_replicas(strategy, layer, shards)

    expected = numpy_normalize(np.concatenate(shards), -1, mean, variance)
    np.testing.assert_allclose(np.concatenate(outputs), expected, atol=TOLERANCE)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), (1 - MOMENTUM) * mean, rtol=TOLERANCE, atol=TOLERANCE
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(),
        MOMENTUM + (1 - MOMENTUM) * variance,
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )


# --- synchronized=True: one collective, accurate variance ---------------------


@pytest.fixture
def collective_calls(monkeypatch):
    """Records (method name, replica id) for every ReplicaContext.all_gather
    and all_reduce call (MirroredStrategy's replica context inherits both)."""
    calls = []
    for name in ("all_gather", "all_reduce"):
        original = getattr(tf.distribute.ReplicaContext, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            replica = tf.get_static_value(self.replica_id_in_sync_group)
            calls.append((_name, int(replica)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(tf.distribute.ReplicaContext, name, counting)
    return calls


@pytest.mark.parametrize(
    "layer_class, expected_per_replica",
    [
        (BatchNorm, [("all_gather", 1)]),
        # Keras all-reduces the sum, the sum of squares and the count
        # separately: recorded as context for the claim above.
        (keras.layers.BatchNormalization, [("all_reduce", 3)]),
    ],
)
def test_sync_bn_uses_a_single_collective_per_call(
    strategy, collective_calls, layer_class, expected_per_replica
):
    """Counts each replica's collectives during one training-mode forward call
    (traced in a tf.function under strategy.run)."""
    shards = shifted_shards((2, 2), (3,), seed=30)
    with strategy.scope():
        layer = layer_class(synchronized=True)
        layer.build((None, 3))
    run_on_replicas(strategy, layer, shards)
    for replica in range(strategy.num_replicas_in_sync):
        names = [name for name, r in collective_calls if r == replica]
        counted = sorted((name, names.count(name)) for name in set(names))
        assert counted == expected_per_replica, f"replica {replica}: {collective_calls}"


def test_sync_bn_backward_pass_uses_a_single_all_reduce(strategy, collective_calls):
    """The gradient of a synchronized call needs two global sums per channel
    (of dy and of dy * x_hat); they travel in one all-reduce, beside the
    forward pass's one all-gather."""
    shards = shifted_shards((2, 2), (2, 2, 3), seed=31)
    with strategy.scope():
        layer = BatchNorm(synchronized=True)
        layer.build((None, 2, 2, 3))

    def replica_step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, training=True)) * tf.range(3.0))
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    @tf.function
    def step(inputs):
        return strategy.run(replica_step, args=(inputs,))

    step(distribute(strategy, shards))
    for replica in range(strategy.num_replicas_in_sync):
        names = sorted(name for name, r in collective_calls if r == replica)
        assert names == ["all_gather", "all_reduce"], f"replica {replica}: {collective_calls}"


def test_sync_bn_variance_is_accurate_when_mean_dominates_std(strategy):
    """Mean 1e4, std 1e-2 (float32) split over 2 replicas: the global variance
    is within 1% of NumPy's float64 variance of the concatenated batch. (One
    float32 ulp of 1e4 is 1e-3, a tenth of the std: a variance taken around a
    mean rounded to float32 is off by up to several percent.)"""
    with strategy.scope():
        # momentum=0: the moving variance becomes the batch variance.
        layer = BatchNorm(momentum=0.0, synchronized=True)
        layer.build((None, 2, 2, 3))

    @tf.function
    def step(inputs):
        strategy.run(lambda x: layer(x, training=True), args=(inputs,))

    for seed in range(40, 45):
        rng = np.random.default_rng(seed)
        shards = [
            (1e4 + 1e-2 * rng.standard_normal((4, 2, 2, 3))).astype(np.float32) for _ in range(2)
        ]
        _, expected_variance = numpy_moments(np.concatenate(shards), -1)
        step(distribute(strategy, shards))
        variances = [layer.moving_variance.numpy(), *replica_copies(layer.moving_variance)]
        for variance in variances:
            np.testing.assert_allclose(variance, expected_variance, rtol=0.01, err_msg=f"{seed=}")


# --- synchronized=True without a strategy -------------------------------------


def test_sync_bn_without_strategy_is_ordinary_batch_norm():
    """Outside any strategy, synchronized=True gives the same output, gradients
    and moving statistics as synchronized=False, and both match NumPy."""
    x = tf.constant(shifted_shards((6,), (2, 2, 3), seed=50)[0])
    results = []
    for synchronized in (True, False):
        layer = BatchNorm(
            momentum=MOMENTUM,
            epsilon=EPSILON,
            synchronized=synchronized,
            gamma_initializer=keras.initializers.Constant([0.5, 1.0, 2.0]),
            beta_initializer=keras.initializers.Constant([0.1, -0.2, 0.3]),
        )
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=True)
            loss = tf.reduce_sum(tf.square(outputs) * tf.range(1.0, 4.0))
        gradients = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append(
            [
                outputs.numpy(),
                *[g.numpy() for g in gradients],
                layer.moving_mean.numpy(),
                layer.moving_variance.numpy(),
            ]
        )
    for synchronized_value, ordinary_value in zip(*results):
        np.testing.assert_allclose(synchronized_value, ordinary_value, rtol=1e-6, atol=1e-7)

    mean, variance = numpy_moments(x.numpy(), -1)
    gamma, beta = np.array([0.5, 1.0, 2.0]), np.array([0.1, -0.2, 0.3])
    expected = numpy_normalize(x.numpy(), -1, mean, variance) * gamma + beta
    np.testing.assert_allclose(results[0][0], expected, atol=TOLERANCE)
    np.testing.assert_allclose(results[0][4], (1 - MOMENTUM) * mean, atol=TOLERANCE)


# --- synchronized=False: per-replica statistics, averaged when read -----------

UNSYNCED_STEPS = 2


def per_replica_shards(step):
    # Replica r sees mean 3r-1 and scale 1+2r, so their statistics drift apart.
    return shifted_shards((4, 4), (3,), seed=60 + step)


def expected_moving_statistics(shards_by_step, replica):
    """NumPy: the moving statistics replica `replica` reaches by updating from
    its own shards only."""
    moving_mean, moving_variance = np.zeros(3), np.ones(3)
    for shards in shards_by_step:
        mean, variance = numpy_moments(shards[replica], -1)
        moving_mean = MOMENTUM * moving_mean + (1 - MOMENTUM) * mean
        moving_variance = MOMENTUM * moving_variance + (1 - MOMENTUM) * variance
    return moving_mean, moving_variance


def bn_model(layer_class):
    inputs = keras.Input((3,))
    outputs = layer_class(momentum=MOMENTUM, epsilon=EPSILON, name="bn")(inputs)
    return keras.Model(inputs, outputs)


def train_unsynchronized(strategy, layer_class):
    """Trains `layer_class` (synchronized=False) for a few steps under the
    strategy. Returns the model, the outputs of each step per replica, and
    the NumPy moving statistics of each replica."""
    with strategy.scope():
        model = bn_model(layer_class)

    @tf.function
    def step(inputs):
        return strategy.run(lambda x: model(x, training=True), args=(inputs,))

    shards_by_step = [per_replica_shards(s) for s in range(UNSYNCED_STEPS)]
    outputs_by_step = [
        local_results(strategy, step(distribute(strategy, shards))) for shards in shards_by_step
    ]
    expected = [
        expected_moving_statistics(shards_by_step, r) for r in range(strategy.num_replicas_in_sync)
    ]
    return model, shards_by_step, outputs_by_step, expected


@pytest.fixture(scope="module")
def unsynchronized(strategy):
    return train_unsynchronized(strategy, BatchNorm)


def test_unsync_bn_normalizes_each_replica_with_its_own_statistics(unsynchronized):
    _, shards_by_step, outputs_by_step, _ = unsynchronized
    for shards, outputs in zip(shards_by_step, outputs_by_step):
        for shard, output in zip(shards, outputs):
            expected = numpy_normalize(shard, -1, *numpy_moments(shard, -1))
            np.testing.assert_allclose(output, expected, atol=TOLERANCE)


def test_unsync_bn_moving_statistics_are_kept_per_replica(unsynchronized):
    model, _, _, expected = unsynchronized
    layer = model.get_layer("bn")
    for index, name in enumerate(("moving_mean", "moving_variance")):
        copies = replica_copies(getattr(layer, name))
        for copy, replica_expected in zip(copies, expected):
            np.testing.assert_allclose(copy, replica_expected[index], atol=TOLERANCE)
        # Otherwise "the average" below could not be told from one replica.
        assert np.abs(copies[0] - copies[1]).min() > 0.05, name


def averaged_expectation(expected):
    return [np.mean([replica[i] for replica in expected], axis=0) for i in range(2)]


def saved_statistics(model, tmp_path):
    """Moving statistics of layer "bn" as read in cross-replica code, as
    returned by get_weights(), as written to a .weights.h5 file (loaded into a
    single-device model) and to a tf.train.Checkpoint (read by name)."""
    layer = model.get_layer("bn")
    read = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    weights = dict(zip([v.path for v in model.weights], model.get_weights()))
    from_get_weights = [weights["bn/moving_mean"], weights["bn/moving_variance"]]

    weights_file = str(tmp_path / "model.weights.h5")
    model.save_weights(weights_file)
    loaded = bn_model(type(layer))
    loaded.load_weights(weights_file)
    loaded_layer = loaded.get_layer("bn")
    from_weights_file = [loaded_layer.moving_mean.numpy(), loaded_layer.moving_variance.numpy()]

    checkpoint_path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    reader = tf.train.load_checkpoint(checkpoint_path)
    from_checkpoint = []
    for name in ("moving_mean", "moving_variance"):
        keys = [k for k, _ in tf.train.list_variables(checkpoint_path) if f"/{name}/" in k]
        assert len(keys) == 1, keys
        from_checkpoint.append(reader.get_tensor(keys[0]))
    return {
        "cross-replica read": read,
        "get_weights": from_get_weights,
        ".weights.h5": from_weights_file,
        "tf.train.Checkpoint": from_checkpoint,
    }


def test_unsync_bn_reads_and_saves_the_average_over_replicas(unsynchronized, tmp_path):
    model, _, _, expected = unsynchronized
    average = averaged_expectation(expected)
    for where, statistics in saved_statistics(model, tmp_path).items():
        for name, value, expected_value in zip(
            ("moving_mean", "moving_variance"), statistics, average
        ):
            message = f"{name} from {where}"
            np.testing.assert_allclose(value, expected_value, atol=TOLERANCE, err_msg=message)


def test_keras_batch_normalization_saves_only_the_first_replicas_statistics(
    strategy, tmp_path
):
    """The problem BatchNorm fixes: under the same strategy and data Keras's
    per-replica statistics drift apart and what is read or saved is replica
    0's copy, not the average."""
    model, _, _, expected = train_unsynchronized(strategy, keras.layers.BatchNormalization)
    first_replica, average = expected[0], averaged_expectation(expected)
    for where, statistics in saved_statistics(model, tmp_path).items():
        for name, value, first, mean in zip(
            ("moving_mean", "moving_variance"), statistics, first_replica, average
        ):
            message = f"{name} from {where}"
            np.testing.assert_allclose(value, first, atol=TOLERANCE, err_msg=message)
            assert np.abs(value - mean).min() > 0.01, message


def test_statistics_restored_in_strategy_scope_are_equal_on_every_replica(
    strategy, unsynchronized, tmp_path
):
    """A tf.train.Checkpoint and a .weights.h5 file of the drifted model,
    loaded into a fresh model inside the scope: every replica holds the saved
    average, so inference gives the same output on every replica."""
    model, _, _, expected = unsynchronized
    average = averaged_expectation(expected)
    checkpoint_path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    weights_file = str(tmp_path / "model.weights.h5")
    model.save_weights(weights_file)

    def restore_from_checkpoint(restored):
        tf.train.Checkpoint(model=restored).read(checkpoint_path).assert_consumed()

    probe = np.random.default_rng(70).normal(size=(2, 3)).astype(np.float32)
    for restore in (restore_from_checkpoint, lambda restored: restored.load_weights(weights_file)):
        with strategy.scope():
            restored = bn_model(BatchNorm)
            restore(restored)
        layer = restored.get_layer("bn")
        for name, expected_value in zip(("moving_mean", "moving_variance"), average):
            for copy in replica_copies(getattr(layer, name)):
                np.testing.assert_allclose(copy, expected_value, atol=TOLERANCE, err_msg=name)
        outputs = local_results(
            strategy,
            strategy.run(
                lambda x: restored(x, training=False), args=(distribute(strategy, [probe, probe]),)
            ),
        )
        np.testing.assert_array_equal(outputs[0], outputs[1])
        np.testing.assert_allclose(
            outputs[0], numpy_normalize(probe, -1, *average), atol=TOLERANCE
        )


# --- layer-level steps: masks, renorm and empty shards -------------------------


def randomized_layer(strategy, input_shape, seed=80, **kwargs):
    """A built BatchNorm (in the strategy's scope) whose every variable,
    renorm statistics included, holds random values (positive where they
    must be)."""
    with strategy.scope():
        layer = BatchNorm(momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
        layer.build(input_shape)
    rng = np.random.default_rng(seed)
    for variable in layer.variables:
        positive = "variance" in variable.path or "stddev" in variable.path or "gamma" in variable.path
        low, high = (0.5, 2.0) if positive else (-1.0, 1.0)
        variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))
    return layer


def statistics_of(layer):
    return {v.path.split("/")[-1]: v for v in layer.non_trainable_variables}


def layer_training_step(layer, x, upstream, mask=None, jit_scope=False):
    """Output of `layer(x, mask=mask, training=True)` and the gradients of
    sum(output * upstream) w.r.t. x, gamma and beta; with `jit_scope`, the
    forward and backward passes are XLA clusters, as `normzoo.training`
    compiles a replica's step under MirroredStrategy on CPU."""

    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=True, mask=mask)
            loss = tf.reduce_sum(outputs * upstream)
        return outputs, tape.gradient(loss, [x, layer.gamma, layer.beta])

    if not jit_scope:
        return forward_backward()
    with tf.xla.experimental.jit_scope(compile_ops=True, separate_compiled_gradients=False):
        return forward_backward()


def distributed_layer_step(strategy, layer, shards, upstreams, masks=None, jit_scope=False):
    """One `layer_training_step` per replica on its shard; returns each
    replica's outputs and input gradient, and gamma's and beta's gradients
    summed over replicas."""
    values = [shards, upstreams] + ([masks] if masks is not None else [])
    inputs = [distribute(strategy, v) for v in values]

    def replica_step(x, upstream, mask=None):
        return layer_training_step(layer, x, upstream, mask, jit_scope)

    @tf.function
    def step(*inputs):
        outputs, (d_x, d_gamma, d_beta) = strategy.run(replica_step, args=inputs)
        d_gamma, d_beta = (
            strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in (d_gamma, d_beta)
        )
        return outputs, d_x, d_gamma, d_beta

    outputs, d_x, d_gamma, d_beta = step(*inputs)
    return local_results(strategy, outputs), local_results(strategy, d_x), d_gamma.numpy(), d_beta.numpy()


def single_device_reference(layer, x, upstream, mask=None):
    """A copy of `layer` outside the strategy, its step on `x`, and its results."""
    reference = BatchNorm.from_config(layer.get_config())
    reference.build((None, *x.shape[1:]))
    reference.set_weights(layer.get_weights())
    mask = None if mask is None else tf.constant(mask)
    outputs, (d_x, d_gamma, d_beta) = layer_training_step(
        reference, tf.constant(x), tf.constant(upstream), mask
    )
    return reference, outputs.numpy(), d_x.numpy(), d_gamma.numpy(), d_beta.numpy()


def random_mask(shape, seed):
    mask = np.random.default_rng(seed).random(shape) < 0.6
    mask[0] = True  # some value of every channel counts
    return mask


EMPTY_SHARD_CASES = {
    # name: (feature shape of a sample, BatchNorm arguments, masked, jit_scope)
    "fused": ((2, 2, 3), {}, False, False),
    "fused_jit_scope": ((2, 2, 3), {}, False, True),
    "composed": ((3,), {}, False, False),
    "masked": ((4, 3), {}, True, False),
    "renorm": ((2, 2, 3), {"renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}}, False, False),
    "synchronized": ((2, 2, 3), {"synchronized": True}, False, False),
    "synchronized_jit_scope": ((2, 2, 3), {"synchronized": True}, False, True),
    "synchronized_masked": ((4, 3), {"synchronized": True}, True, False),
    "synchronized_renorm": ((2, 2, 3), {"synchronized": True, "renorm": True}, False, False),
}


@pytest.mark.parametrize("case", EMPTY_SHARD_CASES)
def test_an_empty_shard_trains_and_contributes_nothing(strategy, case):
    """Replica 1 gets no example (a global batch of 3 on 2 replicas): the
    step runs, every output, gradient and statistic is finite, and the
    results are those of one device on replica 0's 3 examples. Without
    synchronization replica 1's statistics do not move; with it, they take
    the global batch's (replica 0's) statistics like replica 0's."""
    feature_shape, kwargs, masked, jit_scope = EMPTY_SHARD_CASES[case]
    shards = shifted_shards((3, 0), feature_shape, seed=81)
    upstreams = shifted_shards((3, 0), feature_shape, seed=82)
    masks = [random_mask((3, feature_shape[0]), 83), np.zeros((0, feature_shape[0]), bool)] if masked else None
    layer = randomized_layer(strategy, (None, *feature_shape), **kwargs)
    initial = {name: v.numpy() for name, v in statistics_of(layer).items()}
    reference, *expected = single_device_reference(
        layer, shards[0], upstreams[0], masks[0] if masked else None
    )

    outputs, d_x, d_gamma, d_beta = distributed_layer_step(
        strategy, layer, shards, upstreams, masks, jit_scope
    )

    assert outputs[1].shape == d_x[1].shape == (0, *feature_shape)
    for name, got, want in zip(
        ("outputs", "d_x", "d_gamma", "d_beta"), (outputs[0], d_x[0], d_gamma, d_beta), expected
    ):
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE, err_msg=name)
    reference_statistics = statistics_of(reference)
    for name, variable in statistics_of(layer).items():
        copies = replica_copies(variable)
        want = reference_statistics[name].numpy()
        assert np.abs(want - initial[name]).min() > 1e-4, f"{name} did not move on one device"
        np.testing.assert_allclose(copies[0], want, atol=TOLERANCE, err_msg=name)
        if layer.synchronized:
            np.testing.assert_allclose(copies[1], want, atol=TOLERANCE, err_msg=name)
        else:
            np.testing.assert_array_equal(copies[1], initial[name], err_msg=name)


@pytest.mark.parametrize("flatten", [False, True], ids=["image_bn", "dense_bn"])
def test_fit_with_a_last_batch_smaller_than_the_replicas_keeps_every_variable_finite(
    strategy, flatten
):
    """The reported failure: `fit` on 33 samples at batch 16 on 2 replicas
    (the last global batch has one example, so one replica's shard is empty)
    crashed in the 4-D BatchNorm ("Incompatible shapes: [3] vs. [0]"); the
    dense one trained, but put NaN into gamma (as Keras' BatchNormalization
    does).

    The BatchNorm takes the images themselves: no convolution precedes it,
    because TensorFlow's oneDNN convolution fails on an empty batch (see
    `test_tensorflow_onednn_convolution_of_an_empty_batch`), whatever the
    norm after it."""
    with strategy.scope():
        inputs = keras.Input((4, 4, 2))
        x = keras.layers.Flatten()(inputs) if flatten else inputs
        x = BatchNorm(name="bn")(x)
        x = x if flatten else keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(2)(x))
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(90)
    x, y = rng.normal(size=(33, 4, 4, 2)).astype(np.float32), rng.integers(0, 2, 33)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    for variable in model.variables:
        assert np.isfinite(variable.numpy()).all(), variable.path
    for name in ("moving_mean", "moving_variance"):
        for copy in replica_copies(getattr(model.get_layer("bn"), name)):
            assert np.isfinite(copy).all(), name


SYNCHRONIZED_VARIANTS = {
    "masked": ((4, 3), {}, True),
    "renorm": ((2, 2, 3), {"renorm": True, "renorm_clipping": {"rmin": 0.8, "rmax": 1.2, "dmax": 0.3}}, False),
    "masked_renorm": ((4, 3), {"renorm": True, "renorm_momentum": 0.7}, True),
}


@pytest.mark.parametrize("variant", SYNCHRONIZED_VARIANTS)
def test_sync_bn_with_mask_or_renorm_equals_single_device_on_concatenated_batch(
    strategy, variant
):
    """Two synchronized steps on shards of 3 and 5 examples with different
    statistics (and masks: the global batch's selected values set the
    statistics, where Keras uses each replica's own) equal two steps of one
    device on the concatenated batch: outputs, gradients and every
    statistic on both replicas."""
    feature_shape, kwargs, masked = SYNCHRONIZED_VARIANTS[variant]
    layer = randomized_layer(strategy, (None, *feature_shape), synchronized=True, **kwargs)
    reference = BatchNorm.from_config({**layer.get_config(), "synchronized": False})
    reference.build((None, *feature_shape))
    reference.set_weights(layer.get_weights())
    for step in range(2):
        shards = shifted_shards((3, 5), feature_shape, seed=100 + step)
        upstreams = shifted_shards((3, 5), feature_shape, seed=110 + step)
        masks = [random_mask((n, feature_shape[0]), 120 + 2 * step + n) for n in (3, 5)] if masked else None
        outputs, d_x, d_gamma, d_beta = distributed_layer_step(
            strategy, layer, shards, upstreams, masks
        )
        expected_outputs, (expected_d_x, expected_d_gamma, expected_d_beta) = layer_training_step(
            reference,
            tf.constant(np.concatenate(shards)),
            tf.constant(np.concatenate(upstreams)),
            tf.constant(np.concatenate(masks)) if masked else None,
        )
        for name, got, want in (
            ("outputs", np.concatenate(outputs), expected_outputs),
            ("d_x", np.concatenate(d_x), expected_d_x),
            ("d_gamma", d_gamma, expected_d_gamma),
            ("d_beta", d_beta, expected_d_beta),
        ):
            np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE, err_msg=f"{name} {step=}")
    reference_statistics = statistics_of(reference)
    for name, variable in statistics_of(layer).items():
        for copy in replica_copies(variable):
            np.testing.assert_allclose(copy, reference_statistics[name].numpy(), atol=TOLERANCE, err_msg=name)


# --- one set of moving statistics for inference ---------------------------------

FIT_BATCH = 16


def conv_classifier():
    """Conv2D -> BatchNorm "bn" -> global pooling -> Dense, to `fit`."""
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(
        3, 3, padding="same", kernel_initializer=keras.initializers.GlorotUniform(seed=1)
    )(inputs)
    x = BatchNorm(momentum=0.5, epsilon=EPSILON, name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(seed=2))(x)
    return compile_for_fit(keras.Model(inputs, outputs))


def compile_for_fit(model):
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def drifting_data(seed, batches=3):
    """`batches` global batches of FIT_BATCH samples whose halves (the two
    replicas' shards) differ in mean and scale, and labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batches * FIT_BATCH, 4, 4, 2)).astype(np.float32)
    for start in range(0, len(x), FIT_BATCH):
        x[start : start + FIT_BATCH // 2] = 3.0 * x[start : start + FIT_BATCH // 2] + 2.0
    return x, rng.integers(0, 2, len(x))


def fit(model, seed):
    # In order, so that replica r gets half r of every global batch.
    model.fit(*drifting_data(seed), batch_size=FIT_BATCH, epochs=1, shuffle=False, verbose=0)


def single_device_copy(model):
    """A model without a strategy holding `model`'s weights as read in
    cross-replica code (what get_weights, checkpoints and weight files give)."""
    copy = conv_classifier()
    copy.set_weights(model.get_weights())
    return copy


def assert_statistics_drifted(layer):
    """The replicas' copies differ: the test could otherwise not tell the
    average from a replica's own statistics."""
    for name in ("moving_mean", "moving_variance"):
        copies = replica_copies(getattr(layer, name))
        assert np.abs(copies[0] - copies[1]).max() > 0.1, name


def assert_relatively_close(got, want, message=""):
    """Within 1e-6 of the largest |want| (float32 rounding; normalizing with
    each replica's own statistics instead of their average is off by 1e-2
    to 0.5 in these tests)."""
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(), err_msg=message)


def twice_the_same_samples(seed):
    """A global batch whose two halves, one per replica, hold the same samples."""
    half = np.random.default_rng(seed).normal(size=(FIT_BATCH // 2, 4, 4, 2)).astype(np.float32)
    return np.concatenate([half, half])


def test_predict_and_evaluate_after_fit_equal_a_single_device_copy(strategy):
    """After `fit` under MirroredStrategy (the replicas' statistics drifted
    apart), `predict` and `evaluate` under the strategy equal the same
    weights in a model without a strategy, and a sample's logits do not
    depend on the replica it lands on."""
    with strategy.scope():
        model = conv_classifier()
    fit(model, seed=140)
    copy = single_device_copy(model)
    assert_statistics_drifted(model.get_layer("bn"))
    samples = twice_the_same_samples(seed=141)
    labels = np.random.default_rng(142).integers(0, 2, len(samples))

    logits = model.predict(samples, batch_size=FIT_BATCH, verbose=0)
    assert_relatively_close(logits, copy.predict(samples, batch_size=FIT_BATCH, verbose=0))
    half = FIT_BATCH // 2
    assert_relatively_close(logits[half:], logits[:half], "replica 1 against replica 0")
    loss = model.evaluate(samples, labels, batch_size=FIT_BATCH, verbose=0)
    assert_relatively_close(loss, copy.evaluate(samples, labels, batch_size=FIT_BATCH, verbose=0))


def test_fine_tuning_with_frozen_statistics_equals_a_single_device_copy(strategy):
    """`fit` with `frozen_stats=True` (normalizing with the moving statistics
    in training) after the replicas' statistics drifted apart: the weights it
    reaches under the strategy equal those of the same fine-tuning on one
    device, and every replica's statistics stay as they were."""
    with strategy.scope():
        model = conv_classifier()
    # Training-mode calls drift the replicas' statistics apart, as `fit` does.
    batches = tf.data.Dataset.from_tensor_slices(drifting_data(seed=143)[0]).batch(FIT_BATCH)
    call = tf.function(lambda x: strategy.run(lambda x: model(x, training=True), args=(x,)))
    for x in strategy.experimental_distribute_dataset(batches):
        call(x)
    layer = model.get_layer("bn")
    assert_statistics_drifted(layer)
    copy = single_device_copy(model)
    before = {name: replica_copies(getattr(layer, name)) for name in ("moving_mean", "moving_variance")}
    for fine_tuned in (model, copy):
        fine_tuned.get_layer("bn").frozen_stats = True
    # Again, so that Keras retraces its training function.
    with strategy.scope():
        compile_for_fit(model)
    compile_for_fit(copy)
    initial = copy.get_weights()

    fit(model, seed=144)
    fit(copy, seed=144)

    for variable, got, want, start in zip(copy.weights, model.get_weights(), copy.get_weights(), initial):
        if variable.trainable:
            assert np.abs(want - start).max() > 1e-3, f"{variable.path} did not train"
        # Float32 rounding of gradients summed over replicas; normalizing with
        # each replica's own statistics is off by ~1e-2.
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=variable.path)
    for name, copies in before.items():
        for got, want in zip(replica_copies(getattr(layer, name)), copies):
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize(
    "renorm, jit_scope", [(False, False), (False, True), (True, False)], ids=["graph", "jit_scope", "renorm"]
)
def test_a_frozen_stats_layer_trains_with_the_replica_average(strategy, renorm, jit_scope):
    """A training step of a `frozen_stats` layer whose replicas' statistics
    drifted apart, with the same samples on both replicas: outputs and
    gradients equal one device's step on the concatenated batch with the
    averaged statistics; also with renorm (whose training drifts five
    statistics), and with the step compiled by XLA as `normzoo.training`
    compiles it under MirroredStrategy on CPU (the all-reduce outside the
    compiled clusters)."""
    layer = randomized_layer(strategy, (None, 2, 2, 3), seed=150, renorm=renorm)
    run_on_replicas(strategy, layer, shifted_shards((4, 4), (2, 2, 3), seed=151))
    assert_statistics_drifted(layer)
    layer.frozen_stats = True
    sample = shifted_shards((3,), (2, 2, 3), seed=152)[0]
    shards, upstreams = [sample, sample], shifted_shards((3, 3), (2, 2, 3), seed=153)
    _, *expected = single_device_reference(layer, np.concatenate(shards), np.concatenate(upstreams))

    outputs, d_x, d_gamma, d_beta = distributed_layer_step(
        strategy, layer, shards, upstreams, jit_scope=jit_scope
    )

    for name, got, want in zip(
        ("outputs", "d_x", "d_gamma", "d_beta"),
        (np.concatenate(outputs), np.concatenate(d_x), d_gamma, d_beta),
        expected,
    ):
        assert_relatively_close(got, want, name)
    assert_relatively_close(outputs[1], outputs[0], "replica 1 against replica 0")


@pytest.mark.parametrize(
    "batch_norm_kwargs, training",
    [({}, False), ({"frozen_stats": True}, True), ({}, True)],
    ids=["inference", "frozen_stats_training", "batch_statistics_training"],
)
def test_an_unsynchronized_layer_uses_no_collective_under_mirrored_strategy(
    strategy, collective_calls, batch_norm_kwargs, training
):
    """Every replica's copy of the statistics is in this process: in
    inference each replica reads them all (no collective, cheaper than an
    all-reduce), and training with batch statistics communicates nothing."""
    with strategy.scope():
        layer = BatchNorm(**batch_norm_kwargs)
        layer.build((None, 3))
    run_on_replicas(strategy, layer, shifted_shards((2, 2), (3,), seed=160), training=training)
    assert collective_calls == []


def test_the_all_reduce_average_equals_the_cross_replica_read(strategy, collective_calls):
    """Where the replicas' copies are not all in this process (other workers,
    or a function that XLA compiles whole), the average is one all-reduce of
    the moving mean and variance packed together; every replica gets what a
    cross-replica read gives."""
    layer = randomized_layer(strategy, (None, 3), seed=161)
    run_on_replicas(strategy, layer, shifted_shards((4, 4), (3,), seed=162))
    assert_statistics_drifted(layer)
    collective_calls.clear()

    @tf.function
    def average():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            return _distributed_moments._all_reduce_mean(context, [layer.moving_mean, layer.moving_variance])

        return strategy.run(replica_fn)

    per_replica = [local_results(strategy, value) for value in average()]
    for name, copies in zip(("moving_mean", "moving_variance"), per_replica):
        for copy in copies:
            assert_relatively_close(copy, getattr(layer, name).numpy(), name)
    for replica in range(strategy.num_replicas_in_sync):
        assert [name for name, r in collective_calls if r == replica] == ["all_reduce"], collective_calls


@pytest.mark.parametrize("one_replica", ["no_strategy", "one_device"])
def test_inference_adds_nothing_without_several_replicas(collective_calls, one_replica):
    """Without a strategy, or with one replica, inference reads the moving
    statistics as they are: no collective, the output of the formula."""
    if one_replica == "no_strategy":
        single = tf.distribute.get_strategy()
    else:
        single = tf.distribute.OneDeviceStrategy("/cpu:0")
    layer = randomized_layer(single, (None, 3), seed=170)
    x = shifted_shards((4,), (3,), seed=171)[0]

    @tf.function
    def infer(x):
        return single.run(lambda x: layer(x, training=False), args=(x,))

    outputs = infer(tf.constant(x)).numpy()
    assert collective_calls == []
    expected = numpy_normalize(x, -1, layer.moving_mean.numpy(), layer.moving_variance.numpy())
    np.testing.assert_allclose(outputs, expected * layer.gamma.numpy() + layer.beta.numpy(), atol=TOLERANCE)


def test_inference_compiled_whole_by_xla_on_cpu_replicas_names_the_fix(strategy):
    """A function that XLA compiles whole can neither read another device's
    copy of the statistics nor, on CPU devices, all-reduce them: Keras'
    `predict` with `jit_compile=True` under the strategy fails with a message
    that names the layer's need and the fix, not TensorFlow's merge_call
    error."""
    with strategy.scope():
        model = conv_classifier()
        model.compile(jit_compile=True)
    with pytest.raises(RuntimeError, match=r"XLA compiles this replica function whole.*jit_compile=False"):
        model.predict(twice_the_same_samples(seed=180), batch_size=FIT_BATCH, verbose=0)
