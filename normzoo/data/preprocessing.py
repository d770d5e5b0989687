"""Per-example image preprocessing: resizing, augmentation and normalization.

TensorFlow-only: these functions run inside `tf.data` pipelines.
`normzoo.data.load` chooses a `Recipe` for each dataset with `recipe_for` and
applies it to every decoded image with `preprocess`.
"""

import dataclasses

import keras
import tensorflow as tf

PREPROCESS_MODES = ("tf", "torch", "caffe", "vgg")

# TF-slim's vgg_preprocessing subtracts these (R, G, B) means from 0..255
# pixels (tensorflow/models research/slim/preprocessing/vgg_preprocessing.py,
# _R_MEAN, _G_MEAN, _B_MEAN); Keras' "caffe" means are rounded otherwise
# (103.939, 116.779, 123.68) and in BGR order.
SLIM_VGG_MEANS = (123.68, 116.78, 103.94)

# Digits and letters are not mirror-symmetric: a flipped "2" is not a 2.
NO_HORIZONTAL_FLIP = frozenset({"digits", "mnist", "emnist", "kmnist", "svhn_cropped"})

# Datasets of variable-size images (ImageNet-style) are cropped to this size
# unless `image_size` says otherwise.
DEFAULT_CROP_SIZE = 224

# Evaluation resizes the shorter side to crop_size / 0.875 (256 for 224) and
# takes the central crop, as in the ResNet papers' single-crop evaluation.
_EVAL_CROP_FRACTION = 0.875
_RANDOM_CROP_AREA_RANGE = (0.08, 1.0)
_RANDOM_CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# A random translation moves the image by up to 1/8 of its size: the 4 pixels
# of CIFAR training at 32x32, 1 pixel at digits' native 8x8.
_TRANSLATION_FRACTION = 8


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one dataset's images become model inputs.

    Attributes:
        crop: "pad_and_crop" for datasets of fixed-size images (CIFAR-style):
            images are resized to `output_shape` if that differs from the
            stored size; training then pads each side with zeros by 1/8 of the
            size (4 pixels at 32x32) and crops a random window of the original
            size, a random translation. "random_resized_crop" for datasets of
            variable-size images (ImageNet-style): training crops a random
            window of 8% to 100% of the area with aspect ratio 3/4 to 4/3 and
            resizes it; evaluation resizes the shorter side to
            size / 0.875 (256 for 224) and takes the central square.
        horizontal_flip: Whether training flips images left-right with
            probability 1/2 (never for digits and letters).
        output_shape: (height, width, channels) of every preprocessed image.
        preprocess_mode: The normalization. "tf", "torch" and "caffe" as
            `keras.applications.imagenet_utils.preprocess_input(mode=...)`
            defines them: "tf" scales pixels to [-1, 1] (keras.applications'
            ResNetV2, TF-slim's resnet_v2); "torch" scales to [0, 1] and
            standardizes each channel with ImageNet's mean and standard
            deviation (torchvision, timm); "caffe" converts RGB to BGR and
            subtracts ImageNet's mean pixel (0..255 scale), which is what
            `keras.applications.ResNet50` weights expect. "vgg" subtracts
            TF-slim's `vgg_preprocessing` means (`SLIM_VGG_MEANS`) from the
            RGB pixels (0..255 scale), what TF-slim's resnet_v1 checkpoints
            expect. `normzoo.checkpoints.RestoreReport.preprocess_mode` says
            which one a checkpoint expects.
        invert: Whether pixel values are inverted (255 - value) after
            resizing and augmentation, before the normalization: dark
            strokes on a light background for digits. A domain shift for
            fine-tuning experiments; inverting after the random translation
            keeps its zero padding the same colour as the background.
    """

    crop: str
    horizontal_flip: bool
    output_shape: tuple
    preprocess_mode: str
    invert: bool = False


def recipe_for(
    name, stored_shape, *, image_size=None, channels=None, preprocess_mode="tf", invert=False
):
    """Returns the standard `Recipe` for the TFDS dataset `name`.

    Args:
        name: The TFDS dataset name (without version), e.g. "cifar10".
        stored_shape: The shape of the dataset's `image` feature, e.g.
            (32, 32, 3), or (None, None, 3) for variable-size images.
        image_size: Height and width of the output images. None keeps the
            stored size of fixed-size images and crops variable-size images
            to `DEFAULT_CROP_SIZE`.
        channels: Channels of the output images. None keeps the stored
            channels; 3 turns grayscale images into RGB (three equal channels).
        preprocess_mode: One of `PREPROCESS_MODES` (see `Recipe`).
        invert: Invert pixel values (see `Recipe`).

    Raises:
        ValueError: for an unknown `preprocess_mode`, a channel conversion
            other than grayscale to RGB, or an ImageNet-statistics mode on
            images that are not RGB.
    """
    height, width, stored_channels = stored_shape
    if preprocess_mode not in PREPROCESS_MODES:
        raise ValueError(
            f"Unknown preprocess_mode={preprocess_mode!r}; "
            f"choose one of {', '.join(PREPROCESS_MODES)}."
        )
    channels = channels or stored_channels
    if channels != stored_channels and (stored_channels, channels) != (1, 3):
        raise ValueError(
            f"channels={channels} is not possible for {name!r}, whose images have "
            f"{stored_channels} channel(s): the only conversion is grayscale to RGB "
            "(channels=3). Leave channels unset to keep the stored channels."
        )
    if preprocess_mode != "tf" and channels != 3:
        raise ValueError(
            f"preprocess_mode={preprocess_mode!r} normalizes with ImageNet's per-channel "
            f"RGB statistics, but {name!r} images would have {channels} channel(s): "
            "pass channels=3."
        )
    if height is None or width is None:
        size = image_size or DEFAULT_CROP_SIZE
        crop, output_shape = "random_resized_crop", (size, size, channels)
    else:
        crop = "pad_and_crop"
        height, width = (image_size, image_size) if image_size else (height, width)
        output_shape = (height, width, channels)
    return Recipe(
        crop=crop,
        horizontal_flip=name not in NO_HORIZONTAL_FLIP,
        output_shape=output_shape,
        preprocess_mode=preprocess_mode,
        invert=invert,
    )


def preprocess(image, recipe, *, training, seed=None):
    """Turns one decoded image into a float32 model input of `recipe.output_shape`.

    Args:
        image: uint8 tensor of shape (height, width, channels), as decoded
            from the dataset.
        recipe: A `Recipe` from `recipe_for`.
        training: True applies the random augmentation of `recipe`, False the
            deterministic evaluation transform.
        seed: For training, an int tensor of shape (2,): the augmentation is
            a pure function of the image and this seed
            (`tf.random.stateless_*` ops).

    Returns:
        A float32 tensor of shape `recipe.output_shape`, normalized according
        to `recipe.preprocess_mode`.
    """
    if training and seed is None:
        raise ValueError("preprocess(training=True) needs a seed: an int tensor of shape (2,).")
    height, width, channels = recipe.output_shape
    image = tf.cast(image, tf.float32)
    if image.shape[-1] != channels:
        image = tf.image.grayscale_to_rgb(image)
    if training:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if recipe.crop == "pad_and_crop":
        if tuple(image.shape[:2]) != (height, width):
            image = tf.image.resize(image, (height, width))
        if training:
            image = _random_translation(image, crop_seed)
    elif training:
        image = _random_resized_crop(image, height, crop_seed)
    else:
        image = _central_crop(image, height)
    if training and recipe.horizontal_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    # Random crops have a data-dependent shape until resized: restore the static one.
    image = tf.ensure_shape(image, recipe.output_shape)
    if recipe.invert:
        image = 255.0 - image
    if recipe.preprocess_mode == "vgg":
        return image - tf.constant(SLIM_VGG_MEANS, tf.float32)
    return keras.applications.imagenet_utils.preprocess_input(
        image, data_format="channels_last", mode=recipe.preprocess_mode
    )


def _random_translation(image, seed):
    """Pads with zeros by 1/8 of the size and crops a random window of the original size."""
    height, width, _ = image.shape
    pad_height, pad_width = height // _TRANSLATION_FRACTION, width // _TRANSLATION_FRACTION
    padded = tf.pad(image, [[pad_height, pad_height], [pad_width, pad_width], [0, 0]])
    return tf.image.stateless_random_crop(padded, image.shape, seed)


def _random_resized_crop(image, size, seed):
    """Crops a random window (8%-100% of the area, aspect 3/4-4/3) and resizes it to size x size."""
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4))
    begin, crop_shape, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=whole_image,
        seed=seed,
        min_object_covered=_RANDOM_CROP_AREA_RANGE[0],
        aspect_ratio_range=_RANDOM_CROP_ASPECT_RATIO_RANGE,
        area_range=_RANDOM_CROP_AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.image.resize(tf.slice(image, begin, crop_shape), (size, size))


def _central_crop(image, size):
    """Resizes the shorter side to size / 0.875 and crops the central size x size square."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = round(size / _EVAL_CROP_FRACTION) / tf.minimum(height, width)
    resized_height = tf.cast(tf.round(height * scale), tf.int32)
    resized_width = tf.cast(tf.round(width * scale), tf.int32)
    image = tf.image.resize(image, tf.stack([resized_height, resized_width]))
    return tf.image.crop_to_bounding_box(
        image, (resized_height - size) // 2, (resized_width - size) // 2, size, size
    )
