"""Batch normalization that gets fine-tuning and distribution right."""

import math
import numbers
from collections.abc import Mapping

import keras
from keras import initializers, ops

from normzoo.layers import _kernels
from normzoo.layers._affine import AffineNormalization
from normzoo.layers._statistics import (
    Correction,
    broadcast_shape,
    normalize_axes,
    statistics_dtype,
)

_RENORM_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


@keras.saving.register_keras_serializable(package="normzoo")
class BatchNorm(AffineNormalization):
    """Batch normalization (Ioffe & Szegedy, 2015), with Batch
    Renormalization (Ioffe, 2017) as an option.

    A drop-in replacement for `keras.layers.BatchNormalization`: the same
    arguments (in the same order), variables, masking, renorm and numbers,
    and `BatchNorm(**keras_layer.get_config())` builds the equivalent layer;
    plus `frozen_stats` and the differences listed below.

    Normalizes each feature (each channel of an image tensor) with statistics
    taken over every other axis:

        y = gamma * (x - mean) / sqrt(variance + epsilon) + beta

    In training, `mean` and `variance` are the statistics of the current batch
    (the variance is biased, divided by the element count) and the moving
    statistics follow them:

        moving_mean     <- momentum * moving_mean     + (1 - momentum) * mean
        moving_variance <- momentum * moving_variance + (1 - momentum) * variance

    In inference the moving statistics are used, so a sample's output does not
    depend on the rest of its batch (nor, under a distribution strategy, on
    its replica: see below).

    Masking (as Keras): in training, a `mask` selects the values that enter
    the batch statistics; every value, masked or not, is normalized with
    them, and the mask is passed on to the next layer unchanged. In
    inference the mask changes nothing. A batch, shard or channel without
    any selected value (an empty batch, or everything masked) has mean 0 and
    variance 0, and leaves every moving statistic unchanged (Keras moves
    them towards 0 and 0).

    Batch Renormalization (`renorm=True`): in training, the batch-normalized
    value is corrected towards what the moving statistics of the recent
    batches would give,

        y = gamma * ((x - mean) / stddev * r + d) + beta,
        stddev = sqrt(variance + epsilon),
        r = clip(stddev / renorm_stddev, rmin, rmax),
        d = clip((mean - renorm_mean) / renorm_stddev, -dmax, dmax),

    where r and d carry no gradient and `renorm_stddev` is at least
    sqrt(epsilon). Then `renorm_mean` and `renorm_stddev` follow the batch's
    mean and stddev with `renorm_momentum`; `moving_mean` and
    `moving_stddev` follow them with `momentum`, and
    `moving_variance = max(moving_stddev^2 - epsilon, 0)`. Inference is the
    same as without renorm (the moving mean and variance). The variables,
    their initial values (the stddevs start at the square root of
    `moving_variance_initializer`'s values) and their order in
    `layer.weights` are Keras', so a Keras renorm layer's weights load
    (`set_weights`; for `.weights.h5` files, which Keras keys by class name,
    build the model with `normzoo.layers.BatchNormalization`).

    Differences from `keras.layers.BatchNormalization` that a user may rely on:

    - `frozen_stats=True` is the fine-tuning mode: the moving statistics are
      used even when `training=True` and never change, while gamma and beta
      keep learning (their gradient is that of the fixed affine map). This is
      what a pretrained network wants when fine-tuned on small or
      single-class batches. With `renorm=True` it is the same: inference's
      normalization, and none of the five statistics changes.
    - The batch statistics are computed from deviations from one element of
      the batch (with a mask, from the masked mean), so the variance is
      accurate when |mean| >> std and never negative.
    - Training uses TensorFlow's fused kernel for 4-D input without a mask;
      for other ranks, with a mask, with renorm, inside a function compiled
      whole by XLA (`jit_compile=True`) and when synchronized, the formula
      with its closed-form gradient (which XLA fuses better than its own
      batch-norm op, which a synchronized layer gets with one collective
      each way, and into which renorm's r and d fold from the same moments).
      On JAX the layer computes the same formula and closed-form gradient
      with `keras.ops` (its sums written for XLA); on PyTorch the formula,
      which PyTorch differentiates; both with the same guarantees
      (accuracy when |mean| >> std, masks, renorm, float32 statistics).
    - On JAX, under `keras.distribution.DataParallel`, a jit-compiled step
      is one program over the global batch, sharded across the devices:
      the layer's moments are those of the global batch (XLA's SPMD
      partitioner adds the all-reduces), whatever `synchronized` says.
      So `synchronized=True` is accepted there (Keras refuses it on JAX)
      and `synchronized=False` means the same thing: the global batch's
      statistics, not TensorFlow MirroredStrategy's per-replica ones. A
      data-parallel step equals one device's step on the whole batch, and
      the moving statistics are one replicated copy. On PyTorch, where
      Keras has no data-parallel API, `synchronized=True` is a ValueError.
    - Called eagerly on TensorFlow (outside a distribution strategy), a
      training-mode call runs as one `tf.function`, traced on the first
      call of each input signature: its few dozen small ops would each pay
      eager dispatch, which costs more than the arithmetic at small sizes
      (P2's eager rows).
    - A channel whose batch mean or variance is not finite leaves its moving
      statistics unchanged.
    - A training batch of one example is normalized over its spatial
      positions (an image), which is well defined. With one value per
      channel (a dense input, or a 1x1 image) the variance is 0: the output
      is `beta`, the gradients are finite (zero for the input and gamma) and
      the moving variance decays towards 0. Use `frozen_stats=True` or
      `LayerNorm` to train on such batches.
    - An empty batch (a replica's empty shard of a global batch that does
      not divide evenly) trains: the gradients of gamma and beta are 0 and
      the statistics unchanged (Keras gives gamma a NaN gradient).
    - `synchronized=True` gathers the global batch's statistics with a single
      collective per call (Keras uses three all-reduces) and one all-reduce
      in the backward pass, exact also when replicas hold batches of
      different sizes, and also with a mask (Keras then uses each replica's
      own statistics).
    - Under a distribution strategy the moving statistics are kept per replica
      and aggregated by mean on read: what is read in cross-replica code, and
      so what checkpoints and weight files hold, is the average over replicas
      (with `synchronized=False` Keras saves one replica's statistics only).
    - One set of moving statistics for inference under any strategy: with
      several replicas (MirroredStrategy, MultiWorkerMirroredStrategy, ...)
      every replica normalizes with that same average wherever the moving
      statistics are used (inference, `frozen_stats=True`, a layer that is
      not trainable). So `predict`/`evaluate` under the strategy, after
      `fit` or any training loop, equal a single-device model holding the
      saved weights (to float32 rounding), and a sample's output does not
      depend on the replica it lands on. Keras normalizes with each
      replica's own copy, which drift apart in training. Per
      unsynchronized layer and call, each replica reads every replica's
      copy under MirroredStrategy, and elsewhere (other workers' copies, a
      replica function compiled whole by XLA) takes one all-reduce of
      `2 * channels` values; neither depends on the input, so they overlap
      the layers before. Training with batch statistics communicates
      nothing, as before. A synchronized layer updates every copy with the
      global batch's statistics, so its copies are equal and it reads its
      own. Without a strategy, or with one replica, nothing is added. Where
      XLA compiles a replica's function whole on CPU devices (e.g.
      `model.compile(jit_compile=True)` under MirroredStrategy on CPUs),
      neither can run: such a call raises a RuntimeError naming the fix.
    - Under a float16/bfloat16 (mixed) precision policy the statistics, gamma
      and beta are float32 variables and the arithmetic is float32; the output
      is in the layer's compute dtype.
    - Arguments Keras accepts without complaint but that cannot work are
      refused: `momentum` or `renorm_momentum` outside [0, 1], `epsilon` <= 0,
      a fractional `axis` (Keras truncates it), input of rank 1 (there is no
      batch axis to take statistics over), and a mask that does not
      broadcast to the input (a ValueError where Keras fails in TensorFlow).

    Args:
        axis: Integer, the feature axis: -1 for channels-last (NHWC) input,
            1 for channels-first (NCHW).
        momentum: Momentum of the moving averages, in [0, 1].
        epsilon: Small positive float added to the variance to avoid
            dividing by zero.
        center: If True, add the learned offset `beta`.
        scale: If True, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of beta and gamma.
        moving_mean_initializer, moving_variance_initializer: Initializers of
            the moving statistics (with renorm, also of `renorm_mean`, and,
            square-rooted, of `moving_stddev` and `renorm_stddev`).
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        renorm: If True, use Batch Renormalization (above). Adds the
            non-trainable variables `moving_stddev`, `renorm_mean` and
            `renorm_stddev`.
        renorm_clipping: With `renorm`, a dict with optional keys "rmax",
            "rmin" and "dmax" (numbers, rmin <= rmax, dmax >= 0) that clip r
            to [rmin, rmax] and d to [-dmax, dmax]; a missing key does not
            clip. None is the same as {}.
        renorm_momentum: With `renorm`, the momentum of `renorm_mean` and
            `renorm_stddev`, in [0, 1]. Unlike `momentum` it affects training:
            too small adds noise, too large makes r and d stale.
        synchronized: If True, under a `tf.distribute` strategy with several
            replicas, normalize with the statistics of the global batch.
            Without a strategy this is ordinary batch normalization.
            TensorFlow and JAX backends (on JAX every BatchNorm sees the
            global batch under `keras.distribution.DataParallel`, so True
            and False compute the same); a ValueError on PyTorch.
        frozen_stats: If True, always normalize with the moving statistics and
            never update them, in training too. May be changed after
            construction; as with `trainable`, call `model.compile()` again
            afterwards so that Keras retraces its training function.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of any rank >= 2.
        training: Python boolean. True uses and updates batch statistics
            (unless `frozen_stats` is set or the layer is not trainable);
            False or None uses the moving statistics.
        mask: Optional boolean (or 0/1) tensor of the input's shape without
            its last axis, or of a shape that broadcasts to that (Keras' rule:
            the mask is expanded on the last axis); True where a value enters
            the batch statistics. Keras passes it automatically from a
            masking layer such as `Embedding(mask_zero=True)` or `Masking`.

    About setting `layer.trainable = False`: as in Keras, the layer then runs
    in inference mode whatever `training` says, and neither gamma, beta nor
    the moving statistics change.

    References:
        Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
        Training by Reducing Internal Covariate Shift", ICML 2015.
        Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence
        in Batch-Normalized Models", NeurIPS 2017.
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        renorm=False,
        renorm_clipping=None,
        renorm_momentum=0.99,
        synchronized=False,
        frozen_stats=False,
        **kwargs,
    ):
        super().__init__(
            epsilon=_number(epsilon, "epsilon"),
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        if synchronized and keras.backend.backend() not in ("tensorflow", "jax"):
            raise ValueError(
                "`synchronized=True` needs a backend with data parallelism: TensorFlow "
                "(tf.distribute) or JAX (keras.distribution.DataParallel); the Keras backend "
                f"is {keras.backend.backend()!r}, on which Keras has no data-parallel API. "
                "Use synchronized=False, or set KERAS_BACKEND=tensorflow or jax."
            )
        self.axis = _feature_axis(axis)
        self.momentum = _momentum(momentum, "momentum")
        self.renorm = renorm
        # As Keras: validated and defaulted to {} only with renorm.
        self.renorm_clipping = _renorm_clipping(renorm_clipping) if renorm else renorm_clipping
        self.renorm_momentum = _momentum(renorm_momentum, "renorm_momentum")
        self.synchronized = synchronized
        self.frozen_stats = frozen_stats
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.supports_masking = True
        self._compiled_train_forward = _kernels.compiled_when_eager(self._train_forward)

    def build(self, input_shape):
        ndim = len(input_shape)
        if ndim < 2:
            raise ValueError(
                f"BatchNorm needs an input of rank >= 2 (a batch axis and a feature axis); "
                f"got shape {input_shape}. Add a batch axis, e.g. x[None]."
            )
        (feature_axis,) = normalize_axes(self.axis, ndim)
        channels = input_shape[feature_axis]
        if channels is None:
            raise ValueError(
                f"The feature axis {self.axis} of input shape {input_shape} must be known."
            )
        self._feature_axis = feature_axis
        # Tuples: Keras tracks a list set on a layer as a TrackedList, which
        # torch.compile cannot pass to torch ops (a graph break per call).
        self._reduction_axes = tuple(a for a in range(ndim) if a != feature_axis)
        self._broadcast_shape = tuple(broadcast_shape(input_shape, (feature_axis,)))
        self._fused_data_format = _kernels.fused_data_format(feature_axis, ndim)
        dtype = statistics_dtype(self.variable_dtype)
        shape = (channels,)
        self.build_affine(shape, dtype)
        self.moving_mean = self._add_statistic(
            "moving_mean", shape, dtype, self.moving_mean_initializer
        )
        self.moving_variance = self._add_statistic(
            "moving_variance", shape, dtype, self.moving_variance_initializer
        )
        if self.renorm:
            # Keras' names, order and initial values, so its weight files load.
            variance_initializer = self.moving_variance_initializer

            def stddev_initializer(shape, dtype=None):
                return ops.sqrt(variance_initializer(shape, dtype=dtype))

            self.moving_stddev = self._add_statistic(
                "moving_stddev", shape, dtype, stddev_initializer
            )
            self.renorm_mean = self._add_statistic(
                "renorm_mean", shape, dtype, self.moving_mean_initializer
            )
            self.renorm_stddev = self._add_statistic(
                "renorm_stddev", shape, dtype, stddev_initializer
            )
        self.input_spec = keras.InputSpec(ndim=ndim, axes={feature_axis: channels})

    def _add_statistic(self, name, shape, dtype, initializer):
        # Layer.add_weight cannot ask for on-read synchronization. Per-replica
        # copies, each updated locally (no communication in the step), that
        # read as their mean in cross-replica code: checkpoints hold the
        # average over replicas rather than replica 0's copy.
        with keras.name_scope(self.name, caller=self):
            variable = keras.Variable(
                initializer=initializer,
                shape=shape,
                dtype=dtype,
                trainable=False,
                autocast=False,
                aggregation="mean",
                synchronization="on_read",
                name=name,
            )
        return variable

    def _reshape(self, statistic):
        return ops.reshape(statistic, self._broadcast_shape)

    def _statistics_mask(self, mask, x):
        """Keras' mask as a boolean of x's rank: expanded on the last axis and
        broadcast along every reduction axis (along the feature axis only if
        it varies there), so that summing it counts the selected values."""
        mask = ops.expand_dims(ops.cast(mask, "bool"), -1)
        dynamic_shape = ops.shape(x)
        shape = []
        for a, (mask_size, size) in enumerate(zip(mask.shape, x.shape)):
            if mask_size not in (1, size) and None not in (mask_size, size):
                raise ValueError(
                    f"The mask of shape {tuple(mask.shape[:-1])} does not broadcast to the "
                    f"input of shape {tuple(x.shape)}: it must have the input's shape without "
                    "its last axis, or 1 on an axis to broadcast along it."
                )
            shape.append(1 if a == self._feature_axis and mask_size == 1 else dynamic_shape[a])
        return ops.broadcast_to(mask, shape)

    def _train_forward(self, x, mask):
        """Normalizes with the batch's statistics and updates the moving ones."""
        context = _kernels.sync_replica_context() if self.synchronized else None
        if mask is not None:
            mask = self._statistics_mask(mask, x)
        ones = ops.ones(self.moving_mean.shape, x.dtype)
        outputs, mean, variance, count = _kernels.batch_norm_training(
            x,
            self.gamma if self.scale else ones,
            self.beta if self.center else ops.zeros_like(ones),
            self.epsilon,
            self._reduction_axes,
            self._broadcast_shape,
            mask=mask,
            data_format=self._fused_data_format,
            context=context,
            # r and d are folded into the kernel's scale and offset from the
            # moments it computes anyway: renorm costs no extra pass over
            # the batch (P2, normzoo renorm / Keras renorm).
            correction=self._renorm_correction() if self.renorm else None,
        )
        finite = ops.logical_and(ops.isfinite(mean), ops.isfinite(variance))
        # After the outputs: they read the renorm statistics before the update.
        with _kernels.after(outputs):
            self._update_moving_statistics(mean, variance, ops.logical_and(finite, count > 0))
        return outputs

    def _renorm_correction(self):
        """Keras' renorm correction (a `Correction`): r and d of the batch's
        per-channel moments and the renorm statistics before this batch's
        update; r and d carry no gradient."""
        epsilon = self.epsilon
        clipping = {key: value for key, value in self.renorm_clipping.items() if value is not None}

        def correction(mean, variance, renorm_mean, renorm_stddev):
            renorm_stddev = ops.maximum(renorm_stddev, math.sqrt(epsilon))
            r = ops.sqrt(variance + epsilon) / renorm_stddev
            d = (mean - renorm_mean) / renorm_stddev
            if "rmin" in clipping:
                r = ops.maximum(r, float(clipping["rmin"]))
            if "rmax" in clipping:
                r = ops.minimum(r, float(clipping["rmax"]))
            if "dmax" in clipping:
                d = ops.clip(d, -float(clipping["dmax"]), float(clipping["dmax"]))
            # The kernels' moments are finite for any finite batch, an empty
            # one included (mean 0, variance 0): no guard is needed here.
            return ops.stop_gradient(r), ops.stop_gradient(d)

        return Correction(correction, (self.renorm_mean, self.renorm_stddev))

    def _scale_and_offset(self, centered, variance):
        # centered * scale, not x * scale - mean * scale: the latter loses
        # the signal to rounding when |mean| >> std.
        inverse_std = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inverse_std = inverse_std * self._reshape(self.gamma)
        outputs = centered * inverse_std
        if self.center:
            outputs = outputs + self._reshape(self.beta)
        return outputs

    def _update_moving_statistics(self, mean, variance, observed):
        """Moves the statistics towards the batch's, in the channels where
        `observed` (the batch had values there, and finite statistics).
        Elsewhere the batch's statistics are replaced by 0 and the momentum
        by 1, so those channels keep their values exactly; written so, the
        update takes few small ops (eager mode pays for each)."""
        mean = ops.stop_gradient(ops.where(observed, mean, 0.0))
        variance = ops.stop_gradient(ops.where(observed, variance, 0.0))
        weights = {}

        def follow(statistic, batch, momentum):
            if momentum not in weights:
                weights[momentum] = (
                    ops.where(observed, momentum, 1.0),
                    ops.where(observed, 1.0 - momentum, 0.0),
                )
            weight, complement = weights[momentum]
            updated = ops.convert_to_tensor(statistic) * weight + batch * complement
            statistic.assign(updated)
            return updated

        if not self.renorm:
            follow(self.moving_mean, mean, self.momentum)
            follow(self.moving_variance, variance, self.momentum)
            return
        stddev = ops.sqrt(variance + self.epsilon)
        follow(self.renorm_mean, mean, self.renorm_momentum)
        follow(self.renorm_stddev, stddev, self.renorm_momentum)
        follow(self.moving_mean, mean, self.momentum)
        moving_stddev = follow(self.moving_stddev, stddev, self.momentum)
        moving_variance = ops.relu(ops.square(moving_stddev) - self.epsilon)
        self.moving_variance.assign(
            ops.where(observed, moving_variance, ops.convert_to_tensor(self.moving_variance))
        )

    def call(self, inputs, training=None, mask=None):
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                f"The mask must have one axis less than the inputs (their shape without "
                f"the last axis); got mask.shape={tuple(mask.shape)} for "
                f"inputs.shape={tuple(inputs.shape)}."
            )
        x = ops.cast(inputs, self.moving_mean.dtype)
        if training and self.trainable and not self.frozen_stats:
            outputs = self._compiled_train_forward(x, mask)
        else:
            mean, variance = self._moving_statistics()
            outputs = self._scale_and_offset(x - self._reshape(mean), self._reshape(variance))
        return ops.cast(outputs, self.compute_dtype)

    def _moving_statistics(self):
        """The moving mean and variance to normalize with: their average over
        the replicas, as a cross-replica read and a checkpoint give it."""
        # In a replica's code each replica reads its own copy. The copies of
        # an unsynchronized layer drift apart in training (each follows its
        # own shard), so there they are averaged; a synchronized layer
        # updates every copy with the global batch's statistics, so its
        # copies are equal and its own is the average.
        context = None if self.synchronized else _kernels.sync_replica_context()
        if context is None:
            return self.moving_mean, self.moving_variance
        return _kernels.replica_mean(context, [self.moving_mean, self.moving_variance])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {
            "axis": self.axis,
            "momentum": self.momentum,
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
            "renorm": self.renorm,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
            "synchronized": self.synchronized,
            "frozen_stats": self.frozen_stats,
        }
        return {**super().get_config(), **config}



@keras.saving.register_keras_serializable(package="normzoo")
class BatchNormalization(BatchNorm):
    """`BatchNorm` under Keras' class name, for weight files.

    Keras' `.weights.h5` format files each layer's variables under a key
    made from its class name ("batch_normalization", "batch_normalization_1",
    ... in model order), not its `name`: a file saved from a model with
    `keras.layers.BatchNormalization` has no "batch_norm" entries, and
    `load_weights` into the same model built with `BatchNorm` fails. Built
    with this class instead, the model reads (and writes) Keras' keys, so
    such files load both ways. The layer is `BatchNorm` in every other
    respect; models of normzoo's zoo use `BatchNorm`, and their files keep
    its keys.
    """


def _number(value, argument):
    """`float(value)`, raising what `float` raises (as Keras, which converts
    its float arguments so) with a message naming the argument."""
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"`{argument}` must be a number; got {value!r}.") from None


def _momentum(value, argument):
    momentum = _number(value, argument)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"`{argument}` must be in [0, 1] (the weight of the old value in each "
            f"update, e.g. 0.99); got {value!r}."
        )
    return momentum


def _feature_axis(axis):
    """`int(axis)`, raising what `int` raises (as Keras), and a TypeError for
    a fractional number, which Keras would truncate."""
    message = (
        "`axis` must be one integer, the feature axis (-1 for channels-last "
        f"input, 1 for channels-first); got {axis!r}."
    )
    try:
        integer = int(axis)
    except (TypeError, ValueError) as error:
        raise type(error)(message) from None
    if isinstance(axis, numbers.Real) and integer != axis:
        raise TypeError(message)
    return integer


def _renorm_clipping(clipping):
    """Validates `renorm_clipping` as Keras does (a ValueError for an
    unknown key, rmax < rmin or dmax < 0) and returns a copy of it."""
    clipping = {} if clipping is None else clipping
    if not isinstance(clipping, Mapping):
        raise TypeError(
            "`renorm_clipping` must be a dict with optional keys 'rmax', 'rmin' and "
            f"'dmax'; got {clipping!r}."
        )
    unknown = sorted(set(clipping) - set(_RENORM_CLIPPING_KEYS), key=str)
    if unknown:
        raise ValueError(
            f"`renorm_clipping` has unknown key(s) {unknown}; the keys are 'rmax', "
            f"'rmin' and 'dmax'. Got {dict(clipping)!r}."
        )
    for key, value in clipping.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(
                f"`renorm_clipping['{key}']` must be a number (or None for no clipping); "
                f"got {value!r}."
            )
    rmax, rmin, dmax = (clipping.get(key) for key in _RENORM_CLIPPING_KEYS)
    if rmax is not None and rmin is not None and rmax < rmin:
        raise ValueError(
            f"`renorm_clipping` must have rmin <= rmax (r is clipped to [rmin, rmax]); "
            f"got rmin={rmin}, rmax={rmax}."
        )
    if dmax is not None and dmax < 0:
        raise ValueError(
            f"`renorm_clipping['dmax']` must be >= 0 (d is clipped to [-dmax, dmax]); "
            f"got {dmax}."
        )
    return dict(clipping)
