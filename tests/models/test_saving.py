"""A `.keras` file of any model of the zoo loads, without custom_objects, into
a model that computes the same outputs."""

import keras
import numpy as np
import pytest

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
