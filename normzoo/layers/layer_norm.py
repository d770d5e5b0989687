"""Layer normalization: keras.layers.LayerNormalization, plus parameters that
span their own axes and masked statistics."""

import numbers
import warnings

import keras
from keras import ops

from normzoo.layers._affine import AffineNormalization
from normzoo.layers._statistics import (
    moments,
    normalize_axes,
    statistics_dtype,
)

_RMS_SCALING_DEPRECATION = (
    "LayerNorm(rms_scaling=True) is deprecated, as in Keras: it divides the "
    "input by its standard deviation, not by its root mean square. It is kept "
    "to reproduce models trained with keras.layers.LayerNormalization("
    "rms_scaling=True). For RMS normalization use keras.layers.RMSNormalization "
    "instead."
)


@keras.saving.register_keras_serializable(package="normzoo")
class LayerNorm(AffineNormalization):
    """Layer normalization (Ba et al., 2016).

    Normalizes each sample on its own, over the axes `axis`, then applies a
    learned scale and offset that span the axes `param_axis`:

        y = gamma * (x - mean) / sqrt(variance + epsilon) + beta

    where `mean` and the biased `variance` are taken per sample over `axis`.
    No statistic crosses the batch axis, so a sample's output never depends on
    the rest of its batch, in training or inference, and there is nothing to
    keep between steps.

    A drop-in replacement for `keras.layers.LayerNormalization`: the same
    arguments in the same order, the same weights (a `.weights.h5` saved from
    a model with Keras' layer loads into the same model built with this one),
    the same `get_config()` plus `param_axis`, and the same outputs. By
    default gamma and beta span the normalized axes, as in Keras. With image
    tensors (NHWC), `LayerNorm(axis=(1, 2, 3), param_axis=-1)` normalizes each
    image over height, width and channels and keeps one gamma/beta per
    channel: GroupNorm with a single group.

    Masking: the layer accepts Keras' masks and passes them on unchanged.
    Elements whose mask is False do not enter the statistics of the elements
    they are normalized with. With `axis=-1` on (batch, time, features) and a
    (batch, time) mask, each time step is normalized over its own features,
    so this is exactly Keras' behaviour and the output at an unmasked step
    does not depend on the padding. Where `axis` includes a masked axis (e.g.
    `axis=(1, 2)` with a (batch, time) mask), the statistics of a sample are
    taken over its unmasked time steps only, so padding does not change them
    (Keras' layer, which ignores the mask, includes the padded steps).
    Masked elements are normalized with the same statistics as the unmasked
    ones beside them; a group with no unmasked element at all (a padded time
    step when `axis=-1`, a fully padded sample) is normalized over all its
    elements, as without a mask, so every output is finite.

    `rms_scaling=True` reproduces Keras' deprecated
    `LayerNormalization(rms_scaling=True)`: y = gamma * x / sqrt(variance +
    epsilon), the input divided by its standard deviation without being
    centered (not a root-mean-square normalization: it differs from
    `keras.layers.RMSNormalization` whenever the mean is not zero). As in
    Keras, gamma is then always created and applied (even with
    `scale=False`) and beta never (`center` has no effect), and constructing
    the layer warns (UserWarning) pointing to `keras.layers.RMSNormalization`.

    Statistics are computed in float32 or wider (float32 under float16 and
    bfloat16 policies, where gamma and beta are float32 variables), without
    first casting the input to the compute dtype; the output is in the layer's
    compute dtype. They stay accurate when |mean| >> std (shifted moments).

    Differences from Keras, each an error where Keras would compute something
    unintended: `axis` and `param_axis` must not include the batch axis 0 (so
    inputs have rank >= 2) nor name an axis twice, and `epsilon` must be
    positive. Invalid arguments raise the exception types Keras raises:
    TypeError for an `axis` that is not an int or a list/tuple of ints, an
    error that is both a ValueError and an IndexError for an axis out of
    range.

    Args:
        axis: Integer or list/tuple of integers, the axes to normalize over.
            Kept as given (a tuple as a list) and, once the layer is built, as
            a sorted list (`get_config` shows it), as in Keras.
        epsilon: Small positive float added to the variance to avoid dividing
            by zero.
        center: If True, add the learned offset `beta` (unless `rms_scaling`).
        scale: If True, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of beta and gamma.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        param_axis: Integer or list/tuple of integers, the axes gamma and beta
            span; each must have a known size. Every other axis shares them.
            Defaults to `axis` (Keras' layout). Kept like `axis`.
        rms_scaling: Deprecated; see above. Defaults to False.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank >= 2. The layer behaves the same in
            training and inference. Once built, it accepts inputs of any rank
            on which `axis` and `param_axis` name the same sizes for gamma
            and beta, as Keras' layer does.
        mask: Optional boolean tensor with the leading dimensions of `inputs`
            (Keras' masks have one flag per position, e.g. (batch, time) for
            (batch, time, features) inputs) or its full shape; False marks
            elements to leave out of the statistics, as described above.
            Keras passes it automatically from a masking layer such as
            `Embedding(mask_zero=True)`.

    Reference:
        Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
    """


    def __init__(
        self,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        *,
        param_axis=None,
        rms_scaling=False,
        **kwargs,
    ):
        if rms_scaling:
            warnings.warn(_RMS_SCALING_DEPRECATION, UserWarning, stacklevel=2)
        super().__init__(
            epsilon=epsilon,
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
        self.axis = _kept_axes(axis, "axis")
        self.param_axis = None if param_axis is None else _kept_axes(param_axis, "param_axis")
        self.rms_scaling = rms_scaling
        self.supports_masking = True
        # Statistics are taken from the input as given, not from its rounding
        # to the compute dtype (as in Keras' layer).
        self.autocast = False

    def build(self, input_shape):
        _, param_axes = self._resolve_axes(len(input_shape))
        unknown = [a for a in param_axes if input_shape[a] is None]
        if unknown:
            raise ValueError(
                f"gamma and beta span axes {list(param_axes)}, but axis {unknown[0]} of input "
                f"shape {tuple(input_shape)} has unknown size. Give the input a known size "
                f"there, or choose a `param_axis` of known size."
            )
        self._statistics_dtype = statistics_dtype(self.variable_dtype)
        self.build_affine(
            tuple(input_shape[a] for a in param_axes),
            self._statistics_dtype,
            with_gamma=self.scale or self.rms_scaling,
            with_beta=self.center and not self.rms_scaling,
        )
        # Keras' layer keeps its axes as a sorted list once built.
        self.axis = sorted(_as_list(self.axis))
        if self.param_axis is not None:
            self.param_axis = sorted(_as_list(self.param_axis))

    def call(self, inputs, mask=None):
        ndim = len(inputs.shape)
        axes, param_axes = self._resolve_axes(ndim)
        parameter_shape = self._parameter_broadcast_shape(inputs.shape, param_axes)
        dtype = keras.backend.result_type(inputs.dtype, self._statistics_dtype)
        x = ops.cast(inputs, dtype)
        counted = _counted_elements(mask, inputs, axes)
        _, variance, centered = moments(x, axes, counted)
        # Keras' rms_scaling divides the input itself, uncentered.
        outputs = (x if self.rms_scaling else centered) * ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            outputs = outputs * ops.reshape(ops.cast(self.gamma, dtype), parameter_shape)
        if self.beta is not None:
            outputs = outputs + ops.reshape(ops.cast(self.beta, dtype), parameter_shape)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        self._resolve_axes(len(input_shape))
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "param_axis": self.param_axis,
            "rms_scaling": self.rms_scaling,
        }

    def _resolve_axes(self, ndim):
        """`(axes, param_axes)`: the normalized and the parameter axes of an
        input of rank `ndim`, as sorted non-negative tuples."""
        axes = normalize_axes(self.axis, ndim)
        param_axes = (
            axes
            if self.param_axis is None
            else normalize_axes(self.param_axis, ndim, argument="param_axis")
        )
        if 0 in axes or 0 in param_axes:
            raise ValueError(
                "LayerNorm normalizes each sample on its own: `axis` and `param_axis` must "
                f"not include the batch axis 0 of an input of rank {ndim}; got "
                f"axis={self.axis!r}, param_axis={self.param_axis!r}. Name feature axes "
                "only (negative axes count from the end)."
            )
        return axes, param_axes

    def _parameter_broadcast_shape(self, input_shape, param_axes):
        """The shape that broadcasts gamma and beta against an input of
        `input_shape`, after checking that its `param_axes` have their sizes."""
        parameter = self.gamma if self.gamma is not None else self.beta
        shape = [1] * len(input_shape)
        if parameter is None:
            return shape
        for axis, size in zip(param_axes, parameter.shape):
            if input_shape[axis] not in (None, size):
                raise ValueError(
                    f"Layer {self.name!r} was built with gamma/beta of shape "
                    f"{tuple(parameter.shape)} on axes {list(param_axes)}, but got input shape "
                    f"{tuple(input_shape)}. Call it on inputs with those sizes, or use a new "
                    "layer."
                )
            shape[axis] = size
        return shape


def _kept_axes(axis, argument):
    """`axis` as Keras' LayerNormalization keeps it: an int as an int, a list
    or tuple as a list; anything else is a TypeError, as in Keras."""
    if isinstance(axis, numbers.Integral):
        return int(axis)
    if isinstance(axis, (list, tuple)) and all(isinstance(a, numbers.Integral) for a in axis):
        return [int(a) for a in axis]
    raise TypeError(
        f"`{argument}` must be an int or a list/tuple of ints; got {axis!r}. Pass e.g. "
        f"{argument}=-1 or {argument}=[1, 2]."
    )


def _as_list(axis):
    return [axis] if isinstance(axis, int) else list(axis)


def _counted_elements(mask, inputs, axes):
    """The elements of `inputs` that enter the statistics over `axes`, from a
    Keras mask, as a boolean tensor of the inputs' shape; None where every
    element does.

    A mask that varies along none of `axes` is constant over each group of
    elements normalized together, so it would only leave out whole groups,
    which are then normalized as without a mask: there is nothing to compute.
    """
    if mask is None:
        return None
    rank, input_shape = len(mask.shape), tuple(inputs.shape)
    if not any(a < rank for a in axes):
        return None
    fits = rank <= len(input_shape) and all(
        m is None or s is None or m == s for m, s in zip(mask.shape, input_shape)
    )
    if not fits:
        raise ValueError(
            f"A mask of shape {tuple(mask.shape)} does not fit inputs of shape "
            f"{input_shape}: pass a boolean mask with the inputs' leading dimensions "
            f"(e.g. {input_shape[:-1]}, one flag per position) or their full shape."
        )
    counted = ops.cast(mask, "bool")
    for _ in range(len(input_shape) - rank):
        counted = ops.expand_dims(counted, -1)
    counted = ops.broadcast_to(counted, ops.shape(inputs))
    nothing_counted = ops.logical_not(ops.any(counted, axis=axes, keepdims=True))
    return ops.logical_or(counted, nothing_counted)


@keras.saving.register_keras_serializable(package="normzoo")
class LayerNormalization(LayerNorm):
    """`LayerNorm` under Keras' class name, for weight files.

    Keras' `.weights.h5` format files each layer's variables under a key
    made from its class name ("layer_normalization", "layer_normalization_1",
    ... in model order), not its `name`: a file saved from a model with
    `keras.layers.LayerNormalization` has no "layer_norm" entries, and
    `load_weights` into the same model built with `LayerNorm` fails. Built
    with this class instead, the model reads (and writes) Keras' keys, so
    such files load both ways. The layer is `LayerNorm` in every other
    respect; models of normzoo's zoo use `LayerNorm`, and their files keep
    its keys.
    """
