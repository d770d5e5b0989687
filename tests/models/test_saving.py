"""A `.keras` file of any model of the zoo loads, without custom_objects, into
a model that computes the same outputs."""

from pathlib import Path

import keras
import numpy as np
import pytest

from normzoo import bn, models

# Each family's blocks with BatchNorm (v1 bottlenecks have the layer types of
# v1 basic blocks), and the layers of the other norms ("none" adds none) on
# the CIFAR family, the one with ZeroPadChannels.
_CASES = [
    *[(family, "batch") for family in ("imagenet_v1_basic", "imagenet_v2", "cifar", "wide")],
    *[("cifar", norm) for norm in ("layer", "skipinit")],
]


def _randomize(model, rng):
    # Every variable away from its initial value (SkipInit scalars off 0,
    # non-trivial moving statistics), so that a variable lost on the way
    # changes the outputs.
    for variable in model.variables:
        value = rng.uniform(0.5, 1.5, variable.shape) if "variance" in variable.path else None
        if value is None:
            value = variable.numpy() + rng.normal(0.0, 0.1, variable.shape)
        variable.assign(value.astype(variable.dtype))


@pytest.mark.parametrize("family, norm", _CASES)
def test_keras_file_round_trip_reproduces_outputs(family, norm, build_tiny, random_batch, tmp_path):
    model = build_tiny(family, norm)
    rng = np.random.default_rng(0)
    _randomize(model, rng)
    images, _ = random_batch(model)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    assert [(layer.name, type(layer)) for layer in loaded.layers] == [
        (layer.name, type(layer)) for layer in model.layers
    ]
    np.testing.assert_array_equal(
        loaded(images, training=False).numpy(), model(images, training=False).numpy()
    )


# The page that tells users what Keras says then.
LIMITATIONS = Path(__file__).resolve().parents[2] / "docs" / "pages" / "limitations.md"


def test_the_docs_quote_what_keras_says_when_normzoo_was_not_imported(tmp_path, run_python):
    """A `.keras` file of a zoo model, and of a model converted by
    `bn.convert`, loaded in a process that has not imported normzoo: Keras'
    messages are those docs/pages/limitations.md quotes."""
    keras.utils.set_random_seed(0)
    models.build("resnet20", num_classes=10, input_shape=(8, 8, 1)).save(tmp_path / "zoo.keras")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    bn.convert(keras.Model(inputs, x)).save(tmp_path / "converted.keras")
    script = (
        "import sys, keras\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        keras.saving.load_model(path)\n"
        "    except TypeError as error:\n"
        "        print(str(error).strip().splitlines()[-1].split('. Make sure')[0])\n"
    )
    out = run_python("-c", script, tmp_path / "zoo.keras", tmp_path / "converted.keras", backend="tensorflow")
    said = out.splitlines()
    assert said == [
        "Exception encountered: Could not locate class 'BatchNorm'",
        "Exception encountered: Could not locate class 'BatchNormalization'",
    ], out
    page = " ".join(LIMITATIONS.read_text().split())
    for message in said:
        assert f'"{message.removeprefix("Exception encountered: ")}"' in page
