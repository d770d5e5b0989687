"""ImageNet ResNets: v1 (18, 34, 50, 101, 152), v2 (50, 101, 152),
torchvision's Wide ResNet-50-2 and -101-2, and ResNet-D (18d ... 152d).

One builder, a table of variants and a table of layouts. A layout is what a
checkpoint source fixes about the architecture, so that a model built in
that layout computes exactly what the source's model computes:

| layout | v1 stride in | conv biases | downsampling unit | stem pool | BN eps / momentum |
|---|---|---|---|---|---|
| "keras" v1 | first 1x1 | all | first | zero pad 1, valid | 1.001e-5 / 0.99 |
| "keras" v2 | 3x3 | where no norm follows | last (conv5 none) | zero pad 1, valid | 1.001e-5 / 0.99 |
| "torchvision" v1 (= timm) | 3x3 (v1.5) | where no norm follows | first | zero pad 1, valid (*) | 1e-5 / 0.9 |
| "slim" v1 / v2 | 3x3 | where no norm follows | last (block4 none) | "same" | 1e-5 / 0.997 |

(*) torch pads its max pool with -inf; after the stem's ReLU that equals
zero padding. "keras" v1 and v2 are keras.applications' `ResNet50` and
`ResNet50V2` (and 101, 152): same layer names, weight shapes and order,
configurations and parameter counts. torchvision (and timm's `resnet50`) has
no v2; keras.applications and TF-slim have no 18/34, which are built with
their layout's rules.

Two variants widen the v1 family, as torchvision and timm build them:

- `wide_resnet50_2`, `wide_resnet101_2` (Zagoruyko & Komodakis 2016, as
  torchvision defines them): the bottleneck's inner convolutions have twice
  the channels; the block's output does not change.
- ResNet-D, `resnet18d` ... `resnet152d` (He et al. 2019, "Bag of Tricks",
  as timm's `resnet50d`): a deep stem of three 3x3 convolutions (width / 2,
  width / 2, width channels, the first strided), and a downsampling
  shortcut that averages 2x2 windows (`{unit}_0_pool`, padded as timm's
  `ceil_mode=True, count_include_pad=False`) before an unstrided 1x1
  convolution.

These are torchvision/timm architectures, so their default layout is
"torchvision"; the others default to "keras".

Whatever the layout, layers are named as keras.applications names them (see
`normzoo.naming`), which maps one to one onto the other sources:

| normzoo / keras | torchvision, timm | TF-slim `resnet_v{1,2}_50/` |
|---|---|---|
| `conv1_conv`, `conv1_bn` | `conv1`, `bn1` | `conv1`, `conv1/BatchNorm` (v1) |
| `conv1_{j}_conv` / `_bn` (deep stem, j = 1, 2, 3) | timm `conv1.{0,3,6}` / `conv1.{1,4}`, `bn1` | - |
| `conv{s}_block{u}_{j}_conv` / `_bn` | `layer{s-1}.{u-1}.conv{j}` / `bn{j}` | `block{s-1}/unit_{u}/bottleneck_v{1,2}/conv{j}` (`/BatchNorm`) |
| `conv{s}_block{u}_0_conv` / `_bn` | `layer{s-1}.{u-1}.downsample.0` / `.1` (avg-down: `.1` / `.2`) | `.../shortcut` (`/BatchNorm`) |
| `conv{s}_block{u}_preact_bn`, `post_bn` | - | `.../preact`, `postnorm` |
| `predictions` (Dense) | `fc` (Linear: transposed kernel) | `logits` (1x1 conv: kernel of shape (1, 1, in, out)) |
"""

import dataclasses

import keras

from normzoo import naming
from normzoo.models import blocks


@dataclasses.dataclass(frozen=True)
class Variant:
    preactivation: bool
    bottleneck: bool
    depths: tuple
    # Inner channels of a bottleneck relative to the standard ResNet's.
    bottleneck_width: int = 1
    # Deep stem and average-pool downsampling shortcut (ResNet-D).
    resnet_d: bool = False
    default_layout: str = "keras"


_DEPTHS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}

VARIANTS = {
    **{
        f"resnet{depth}": Variant(preactivation=False, bottleneck=bottleneck, depths=depths)
        for depth, (bottleneck, depths) in _DEPTHS.items()
    },
    **{
        f"resnet{depth}v2": Variant(preactivation=True, bottleneck=True, depths=_DEPTHS[depth][1])
        for depth in (50, 101, 152)
    },
    **{
        f"wide_resnet{depth}_2": Variant(
            preactivation=False,
            bottleneck=True,
            depths=_DEPTHS[depth][1],
            bottleneck_width=2,
            default_layout="torchvision",
        )
        for depth in (50, 101)
    },
    **{
        f"resnet{depth}d": Variant(
            preactivation=False,
            bottleneck=bottleneck,
            depths=depths,
            resnet_d=True,
            default_layout="torchvision",
        )
        for depth, (bottleneck, depths) in _DEPTHS.items()
    },
}


@dataclasses.dataclass(frozen=True)
class Layout:
    stride_in_first_conv: bool  # bottleneck only: stride in the first 1x1, not the 3x3
    conv_bias: str
    downsample_unit: str
    stem_pool_padding: str  # "zeros": ZeroPadding2D(1) + "valid"; "same"
    epsilon: float
    momentum: float


# LAYOUTS[layout][preactivation]
LAYOUTS = {
    "keras": {
        False: Layout(True, "always", "first", "zeros", 1.001e-5, 0.99),
        True: Layout(False, "unnormalized", "last", "zeros", 1.001e-5, 0.99),
    },
    "torchvision": {
        False: Layout(False, "unnormalized", "first", "zeros", 1e-5, 0.9),
    },
    "slim": {
        False: Layout(False, "unnormalized", "last", "same", 1e-5, 0.997),
        True: Layout(False, "unnormalized", "last", "same", 1e-5, 0.997),
    },
}

_STAGE_STRIDES = (1, 2, 2, 2)


def check_layout(variant, layout):
    """Raises ValueError, naming the valid layouts, unless `layout` is one
    of `variant`'s (v2 ResNets have no "torchvision" layout)."""
    spec = VARIANTS[variant]
    if not isinstance(layout, str) or spec.preactivation not in LAYOUTS.get(layout, {}):
        valid = [key for key, by_version in LAYOUTS.items() if spec.preactivation in by_version]
        raise ValueError(
            f"Unknown layout {layout!r} for {variant}; valid layouts: {', '.join(valid)}."
        )


def resnet(
    variant,
    *,
    norm="batch",
    num_classes=1000,
    input_shape=(224, 224, 3),
    layout=None,
    width=64,
    skipinit_alpha=None,
    synchronized_bn=False,
    classifier_activation=None,
    name=None,
):
    """Builds an ImageNet ResNet as a Keras functional model.

    Args:
        variant: A key of `VARIANTS`, e.g. "resnet50" or "resnet50v2".
        norm: One of `normzoo.naming.NORMS`.
        num_classes: Size of the classifier; 0 for no classifier (the output
            is then the globally average-pooled features).
        input_shape: Channels-last input shape; height and width may be None.
        layout: "keras", "torchvision" or "slim" (see the module docstring);
            None for the variant's own: "torchvision" for Wide ResNets and
            ResNet-D, "keras" for the others.
        width: Channels of the stem; stage s has width * 2**s bottleneck
            channels (4x that at a bottleneck block's output; twice as many
            inner channels in Wide ResNets). 64 is the published network;
            smaller values make small test models (even, for ResNet-D,
            whose deep stem starts with width / 2 channels).
        skipinit_alpha: Initial SkipInit scalar (norm="skipinit" only;
            default 0).
        synchronized_bn: BatchNorm's `synchronized` (norm="batch" only).
        classifier_activation: Activation of the classifier; None returns
            logits.
        name: Model name; defaults to `variant`.

    Returns:
        A `keras.Model`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown ResNet variant {variant!r}; valid: {', '.join(VARIANTS)}.")
    spec = VARIANTS[variant]
    if layout is None:
        layout = spec.default_layout
    check_layout(variant, layout)
    style = LAYOUTS[layout][spec.preactivation]
    blocks.check_integer("width", width, 2 if spec.resnet_d else 1, "channels of the stem")
    if spec.resnet_d and width % 2:
        raise ValueError(
            f"width={width} is odd, but {variant}'s deep stem starts with width / 2 channels: "
            f"pass an even width (64 is the published network)."
        )
    blocks.check_classifier(num_classes, classifier_activation)
    normalization = blocks.Normalization(
        norm,
        epsilon=style.epsilon,
        momentum=style.momentum,
        synchronized=synchronized_bn,
        skipinit_alpha=skipinit_alpha,
    )

    inputs = blocks.model_input(input_shape)
    if spec.resnet_d:
        x = inputs
        stem_convs = ((width // 2, 2), (width // 2, 1), (width, 1))
        for j, (filters, strides) in enumerate(stem_convs, 1):
            prefix = naming.deep_stem(j)
            x = blocks.conv2d(
                x,
                filters,
                3,
                strides=strides,
                use_bias=normalization.use_bias(style.conv_bias, followed_by_norm=True),
                name=prefix,
            )
            x = blocks.relu(normalization.normalize(x, prefix), name=f"{prefix}_relu")
    else:
        # A pre-activation stem has neither norm nor ReLU: the first block's
        # pre-activation provides them.
        x = blocks.conv2d(
            inputs,
            width,
            7,
            strides=2,
            use_bias=normalization.use_bias(
                style.conv_bias, followed_by_norm=not spec.preactivation
            ),
            name=naming.STEM,
        )
        if not spec.preactivation:
            x = blocks.relu(normalization.normalize(x, naming.STEM), name=f"{naming.STEM}_relu")
    if style.stem_pool_padding == "zeros":
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    else:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)

    strides = blocks.unit_strides(spec.depths, _STAGE_STRIDES, style.downsample_unit)
    for stage, stage_strides in enumerate(strides):
        filters = width * 2**stage
        inner = filters * spec.bottleneck_width
        for unit, unit_stride in enumerate(stage_strides, start=1):
            if not spec.bottleneck:
                convs = [(filters, 3, unit_stride), (filters, 3, 1)]
            elif style.stride_in_first_conv:
                convs = [(inner, 1, unit_stride), (inner, 3, 1), (4 * filters, 1, 1)]
            else:
                convs = [(inner, 1, 1), (inner, 3, unit_stride), (4 * filters, 1, 1)]
            x = blocks.residual_block(
                x,
                convs,
                preactivation=spec.preactivation,
                norm=normalization,
                conv_bias=style.conv_bias,
                shortcut="average_pool_projection" if spec.resnet_d else "projection",
                name=naming.block(stage + 2, unit),
            )

    outputs = blocks.classifier_head(
        x,
        preactivation=spec.preactivation,
        norm=normalization,
        num_classes=num_classes,
        classifier_activation=classifier_activation,
    )
    return keras.Model(inputs, outputs, name=name or variant)
