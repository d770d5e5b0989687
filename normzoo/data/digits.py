"""The embedded default dataset: scikit-learn's handwritten digits as a TFDS builder.

The 1,797 images ship inside the scikit-learn wheel, so preparing this
dataset needs no network. Importing this module registers the builder with
tensorflow-datasets under the name "digits":

    import normzoo.data
    builder = tfds.builder("digits", data_dir=...)
    builder.download_and_prepare()        # offline, a few seconds
    ds = tfds.load("digits", split="train")
"""

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
TRAIN_EXAMPLES = 1437
TEST_EXAMPLES = 360

_SOURCE_MAX_VALUE = 16  # each sklearn pixel counts the "on" pixels of a 4x4 block

_HOMEPAGE = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"
_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}"""


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits (`sklearn.datasets.load_digits`).

    What a user may rely on:

    - Features: `image`, uint8 of shape (8, 8, 1), values 0..255; `label`, a
      `ClassLabel` with 10 classes named "0".."9"; `index`, the image's row in
      `sklearn.datasets.load_digits()`.
    - Pixel values: scikit-learn stores each pixel as a count 0..16;
      the image holds `round(count * 255 / 16)` with halves rounded up, so
      0 -> 0, 8 -> 128 and 16 -> 255.
    - A fixed split by position in scikit-learn's order, with no randomness:
      `train` is the first 1,437 images (rows 0..1436, 80%), `test` the last
      360 (rows 1437..1796). Every class is in both: 141 to 146 times in
      `train`, 33 to 37 times in `test`.
    - Images are stored at their native 8x8 resolution; resizing (e.g. to
      32x32x3 for CIFAR models) is done by `normzoo.data.load`, so one
      prepared copy serves every resolution.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "The 1,797 8x8 grayscale handwritten digits that ship with "
                "scikit-learn (a copy of the test set of the UCI Optical "
                "Recognition of Handwritten Digits dataset), split by position: "
                f"the first {TRAIN_EXAMPLES} images for training, the last "
                f"{TEST_EXAMPLES} for testing."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(
                        names=[str(digit) for digit in range(NUM_CLASSES)]
                    ),
                    "index": tfds.features.Scalar(
                        dtype=np.int64,
                        doc="Row of the image in sklearn.datasets.load_digits().",
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data is inside scikit-learn.
        # Imported here: scikit-learn is only needed to prepare the dataset.
        from sklearn.datasets import load_digits

        digits = load_digits()
        counts = digits.images.astype(np.int64)
        images = ((counts * 255 + _SOURCE_MAX_VALUE // 2) // _SOURCE_MAX_VALUE).astype(np.uint8)
        images = images[..., np.newaxis]
        return {
            "train": self._generate_examples(images, digits.target, range(0, TRAIN_EXAMPLES)),
            "test": self._generate_examples(
                images, digits.target, range(TRAIN_EXAMPLES, TRAIN_EXAMPLES + TEST_EXAMPLES)
            ),
        }

    def _generate_examples(self, images, labels, rows):
        for row in rows:
            yield row, {"image": images[row], "label": labels[row], "index": row}
