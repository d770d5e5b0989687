"""Residual blocks, written once, with the normalization injected by name.

Every network in `normzoo.models` is a stem, stages of `residual_block`s and
a `classifier_head`. What differs between families and checkpoint sources
(where the stride sits, which convolutions have biases, which unit of a stage
downsamples, epsilon) is an argument here, never a second copy of a block.

Normalizations (`normzoo.naming.NORMS`):

- `"batch"`: `normzoo.layers.BatchNorm` wherever the architecture has a norm
  (after each convolution in v1 blocks, before them in pre-activation ones).
- `"layer"`: `normzoo.layers.LayerNorm(axis=(1, 2, 3), param_axis=-1)` in
  the same places: each image normalized over height, width and channels, one
  gamma/beta per channel.
- `"skipinit"`: no normalization layers; every convolution has a bias, and a
  `normzoo.layers.SkipInit` scalar ends every residual branch, before the
  addition (De & Smith, 2020).
- `"none"`: as `"skipinit"` without the scalar.

Layers are named as `normzoo.naming` describes (the names that checkpoint
restore relies on).
"""

import dataclasses
import math
import numbers

import keras
import numpy as np
from keras import ops

from normzoo import naming
from normzoo.layers import BatchNorm, LayerNorm, SkipInit

# Which convolutions get a bias when the network normalizes (without
# normalization every convolution gets one, as in the SkipInit paper):
# "always"; "unnormalized": those that no norm follows, as keras.applications'
# ResNetV2 and TF-slim do; "never".
CONV_BIASES = ("always", "unnormalized", "never")

SHORTCUTS = ("projection", "average_pool_projection", "zero_pad")
DOWNSAMPLE_UNITS = ("first", "last")

# He et al.'s initialization, as torchvision, TF-slim and the CIFAR and
# Wide-ResNet papers use; the signal-propagation analysis assumes it.
_KERNEL_INITIALIZER = "he_normal"


def check_choice(argument, value, choices):
    """Raises ValueError, naming `argument`, `value` and the valid `choices`,
    unless `value` is one of them."""
    if value not in choices:
        raise ValueError(
            f"Unknown {argument} {value!r}; valid values are {', '.join(map(repr, choices))}."
        )


def check_integer(argument, value, minimum, meaning):
    """Raises TypeError unless `value` is an integer (a bool is not), and
    ValueError unless it is at least `minimum`; `meaning` says what the
    argument is, for the message."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{argument} ({meaning}) must be an integer >= {minimum}; got {value!r} of type "
            f"{type(value).__name__}. Pass an int."
        )
    if value < minimum:
        raise ValueError(f"{argument} ({meaning}) must be an integer >= {minimum}; got {value!r}.")


def check_number(argument, value, meaning, *, minimum=-math.inf, below=math.inf):
    """Raises TypeError unless `value` is a real number (a bool is not), and
    ValueError unless it is finite, >= `minimum` and < `below`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{argument} ({meaning}) must be a number; got {value!r} of type "
            f"{type(value).__name__}. Pass a float."
        )
    if not (math.isfinite(value) and minimum <= value < below):
        bounds = [f">= {minimum}"] * (minimum > -math.inf) + [f"< {below}"] * (below < math.inf)
        raise ValueError(
            f"{argument} ({meaning}) must be a finite number{' ' if bounds else ''}"
            f"{' and '.join(bounds)}; got {value!r}."
        )


def check_input_shape(input_shape):
    """Returns `input_shape` as a tuple after checking that it is
    (height, width, channels) with positive integers (height and width may
    be None); raises TypeError or ValueError, naming it, otherwise."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    valid = shape is not None and len(shape) == 3 and all(
        (dimension is None and axis < 2)
        or (
            isinstance(dimension, numbers.Integral)
            and not isinstance(dimension, (bool, np.bool_))
            and dimension > 0
        )
        for axis, dimension in enumerate(shape)
    )
    if not valid:
        raise (TypeError if shape is None else ValueError)(
            f"input_shape must be (height, width, channels), channels-last, with positive "
            f"integers (height and width may be None); got {input_shape!r}. Pass e.g. "
            f"input_shape=(32, 32, 3)."
        )
    return shape


def model_input(input_shape):
    """The model's `keras.Input` ("input") of channels-last `input_shape`,
    checked by `check_input_shape`."""
    return keras.Input(shape=check_input_shape(input_shape), name="input")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """The normalization of a network: which one, and its hyperparameters.

    Attributes:
        kind: One of `normzoo.naming.NORMS`.
        epsilon: Epsilon of BatchNorm and LayerNorm.
        momentum: Momentum of BatchNorm's moving statistics.
        synchronized: BatchNorm's `synchronized` (only with kind "batch").
        skipinit_alpha: Initial value of the SkipInit scalars (only with kind
            "skipinit"); None means 0.
    """

    kind: str
    epsilon: float = 1e-3
    momentum: float = 0.99
    synchronized: bool = False
    skipinit_alpha: float | None = None

    def __post_init__(self):
        check_choice("norm", self.kind, naming.NORMS)
        if self.skipinit_alpha is not None:
            check_number("skipinit_alpha", self.skipinit_alpha, "the initial SkipInit scalar")
            if self.kind != "skipinit":
                raise ValueError(
                    f"`skipinit_alpha` applies to norm='skipinit' only; got norm={self.kind!r}."
                )
        if not isinstance(self.synchronized, (bool, np.bool_)):
            raise TypeError(
                f"synchronized_bn must be True or False; got {self.synchronized!r} of type "
                f"{type(self.synchronized).__name__}."
            )
        if self.synchronized and self.kind != "batch":
            raise ValueError(
                f"`synchronized_bn` applies to norm='batch' only; got norm={self.kind!r}."
            )

    @property
    def normalizes(self):
        """True if the network has normalization layers."""
        return self.kind in ("batch", "layer")

    def normalize(self, x, name):
        """Applies the norm layer `naming.norm(name, kind)`, or nothing."""
        if self.kind == "batch":
            return BatchNorm(
                momentum=self.momentum,
                epsilon=self.epsilon,
                synchronized=self.synchronized,
                name=naming.norm(name, "batch"),
            )(x)
        if self.kind == "layer":
            return LayerNorm(
                axis=(1, 2, 3),
                param_axis=-1,
                epsilon=self.epsilon,
                name=naming.norm(name, "layer"),
            )(x)
        return x

    def scale_branch(self, x, name):
        """Ends the residual branch of block `name`: its SkipInit scalar, or nothing."""
        if self.kind == "skipinit":
            alpha = 0.0 if self.skipinit_alpha is None else self.skipinit_alpha
            return SkipInit(initial_alpha=alpha, name=naming.skipinit(name))(x)
        return x

    def use_bias(self, conv_bias, followed_by_norm):
        """Whether a convolution gets a bias under the policy `conv_bias`
        (one of `CONV_BIASES`)."""
        check_choice("conv_bias", conv_bias, CONV_BIASES)
        if not self.normalizes or conv_bias == "always":
            return True
        return conv_bias == "unnormalized" and not followed_by_norm


@keras.saving.register_keras_serializable(package="normzoo")
class ZeroPadChannels(keras.layers.Layer):
    """Appends zero-valued channels (channels-last) up to `channels`.

    With a stride-2 subsampling before it, this is the parameter-free
    "option A" shortcut of He et al. (2016) for CIFAR ResNets.

    Args:
        channels: Number of output channels; at least the input's.
        **kwargs: Base layer keyword arguments.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, input_shape):
        if input_shape[-1] is None or input_shape[-1] > self.channels:
            raise ValueError(
                f"ZeroPadChannels pads up to {self.channels} channels; the input "
                f"has {input_shape[-1]}."
            )

    def call(self, inputs):
        extra = self.channels - inputs.shape[-1]
        return ops.pad(inputs, [[0, 0]] * (len(inputs.shape) - 1) + [[0, extra]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


def relu(x, name):
    return keras.layers.Activation("relu", name=name)(x)


def conv2d(x, filters, kernel_size, *, strides=1, use_bias, name):
    """The convolution `naming.conv(name)`, padded as every checkpoint source pads.

    With stride 1 the padding is "same". A strided convolution larger than
    1x1 is preceded by explicit zero padding of (k - 1) // 2 before and
    k - 1 - (k - 1) // 2 after (layer `{name}_pad`) and is "valid": this is
    torchvision's `padding=k // 2`, TF-slim's `conv2d_same` and
    keras.applications' `ZeroPadding2D`, whereas Keras' strided "same" would
    pad only after the image on even sizes.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        before = (kernel_size - 1) // 2
        x = keras.layers.ZeroPadding2D((before, kernel_size - 1 - before), name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=_KERNEL_INITIALIZER,
        name=naming.conv(name),
    )(x)


def residual_block(
    x,
    convs,
    *,
    preactivation,
    norm,
    conv_bias,
    shortcut="projection",
    dropout_rate=0.0,
    name,
):
    """One residual block: `skip(x) + branch(x)`.

    The branch is the convolutions `convs`, each followed by the norm and a
    ReLU except that:
    - post-activation (v1, arXiv:1512.03385): the last convolution has its
      norm but no ReLU; the block ends with a ReLU after the addition
      (`{name}_out`).
    - pre-activation (v2, arXiv:1603.05027): the block starts with norm + ReLU
      (`{name}_preact`), whose output feeds the branch; the last convolution
      has neither norm nor ReLU, and nothing follows the addition.
    With `norm.kind == "skipinit"` the branch ends in the SkipInit scalar, so
    at initialization (alpha = 0) the block computes `skip(x)` exactly (v1
    adds its final ReLU, the identity on the non-negative outputs of a
    previous v1 block).

    The skip path is the input itself when the channels and resolution are
    unchanged; `x` subsampled with a 1x1 max pool (`{name}_0_pool`) when only
    the resolution changes; when the channels change, `"projection"` is a
    strided 1x1 convolution `{name}_0_conv` (followed by the norm in v1;
    taking the pre-activation in v2) and `"zero_pad"` the subsampled input
    with zero channels appended (`{name}_0_zeropad`, He et al.'s option A).
    `"average_pool_projection"` is ResNet-D's: the input averaged over
    windows of the block's stride (`{name}_0_pool`, "same" padding: a window
    cut by the image's edge averages the pixels it holds, as torch's
    `AvgPool2d(ceil_mode=True, count_include_pad=False)`), then an
    unstrided 1x1 convolution (and norm); with stride 1 it is "projection".

    Args:
        x: Input tensor, channels-last.
        convs: The branch's convolutions as (filters, kernel_size, strides)
            tuples; the block's stride is the product of their strides.
        preactivation: True for a v2 (pre-activation) block.
        norm: A `Normalization`.
        conv_bias: One of `CONV_BIASES`.
        shortcut: One of `SHORTCUTS`, used when the channels change.
        dropout_rate: Dropout before the last convolution of the branch (as
            in Wide-ResNets); 0 adds no layer.
        name: Prefix of every layer name, e.g. "conv2_block1".

    Returns:
        The block's output tensor.
    """
    check_choice("shortcut", shortcut, SHORTCUTS)
    out_channels = convs[-1][0]
    strides = math.prod(conv_strides for _, _, conv_strides in convs)

    branch = x
    if preactivation:
        preact = naming.preact(name)
        branch = relu(norm.normalize(x, preact), name=f"{preact}_relu")

    shortcut_name = naming.branch(name, 0)
    if x.shape[-1] != out_channels and shortcut != "zero_pad":
        skip, skip_strides = branch, strides
        if shortcut == "average_pool_projection" and strides > 1:
            skip = keras.layers.AveragePooling2D(
                strides, strides=strides, padding="same", name=f"{shortcut_name}_pool"
            )(skip)
            skip_strides = 1
        skip = conv2d(
            skip,
            out_channels,
            1,
            strides=skip_strides,
            use_bias=norm.use_bias(conv_bias, followed_by_norm=not preactivation),
            name=shortcut_name,
        )
        if not preactivation:
            skip = norm.normalize(skip, shortcut_name)
    else:
        skip = x
        if strides > 1:
            skip = keras.layers.MaxPooling2D(1, strides=strides, name=f"{shortcut_name}_pool")(skip)
        if x.shape[-1] != out_channels:
            skip = ZeroPadChannels(out_channels, name=f"{shortcut_name}_zeropad")(skip)

    for j, (filters, kernel_size, conv_strides) in enumerate(convs, start=1):
        last = j == len(convs)
        if last and dropout_rate:
            branch = keras.layers.Dropout(dropout_rate, name=f"{name}_dropout")(branch)
        followed_by_norm = not (preactivation and last)
        conv_name = naming.branch(name, j)
        branch = conv2d(
            branch,
            filters,
            kernel_size,
            strides=conv_strides,
            use_bias=norm.use_bias(conv_bias, followed_by_norm),
            name=conv_name,
        )
        if followed_by_norm:
            branch = norm.normalize(branch, conv_name)
        if not last:
            branch = relu(branch, name=f"{conv_name}_relu")
    branch = norm.scale_branch(branch, name)

    y = keras.layers.Add(name=naming.add(name))([skip, branch])
    if not preactivation:
        y = relu(y, name=f"{name}_out")
    return y


def unit_strides(depths, strides, downsample_unit):
    """The stride of every unit of every stage.

    Args:
        depths: Number of units of each stage.
        strides: Stride of each stage.
        downsample_unit: "first": a stage's first unit has the stage's
            stride (He et al., keras.applications v1, torchvision).
            "last": the stride of stage s + 1 moves to the last unit of stage
            s, and the last stage keeps resolution (TF-slim, and
            keras.applications v2); the first stage's stride must be 1.

    Returns:
        A list with one list of unit strides per stage.
    """
    check_choice("downsample_unit", downsample_unit, DOWNSAMPLE_UNITS)
    if downsample_unit == "first":
        return [[s] + [1] * (n - 1) for n, s in zip(depths, strides)]
    if strides[0] != 1:
        raise ValueError(
            f"With downsample_unit='last' the first stage's stride must be 1; got {strides}."
        )
    return [[1] * (n - 1) + [s] for n, s in zip(depths, [*strides[1:], 1])]


def check_classifier(num_classes, classifier_activation):
    """Raises TypeError or ValueError, naming the argument, unless
    `num_classes` is an integer >= 0 and `classifier_activation` a Keras
    activation (None: logits). Builders call it before building anything."""
    check_integer("num_classes", num_classes, 0, "classes of the classifier, 0 for none")
    try:
        keras.activations.get(classifier_activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown classifier_activation {classifier_activation!r} ({error}). Pass None for "
            f"logits, a Keras activation name such as 'softmax', or a callable."
        ) from None


def classifier_head(x, *, preactivation, norm, num_classes, classifier_activation):
    """Final norm + ReLU (pre-activation networks), global average pooling
    (`avg_pool`) and the dense classifier `predictions` (omitted when
    `num_classes` is 0: the pooled features are the output); the arguments
    as `check_classifier` accepts them."""
    if preactivation:
        x = relu(norm.normalize(x, naming.POST), name=f"{naming.POST}_relu")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if num_classes:
        x = keras.layers.Dense(
            int(num_classes), activation=classifier_activation, name=naming.CLASSIFIER
        )(x)
    return x
