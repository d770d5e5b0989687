"""normzoo.benchmarks: what P2 compares is the same computation in both
libraries (checked against Keras and NumPy), targets are checked as
written, and bad settings name themselves. No timings are asserted."""

import dataclasses

import keras
import numpy as np
import pytest

from normzoo.benchmarks import Settings, measurement, p2_batch_norm
from normzoo.layers import BatchNorm

TINY = Settings(
    layers_batch_size=4, layers_image_size=8, sequence_batch_size=6, sequence_length=5
)


def _batch_norms(model):
    return [layer for layer in model.layers if isinstance(layer, (BatchNorm, keras.layers.BatchNormalization))]


@pytest.mark.parametrize("case_name", list(p2_batch_norm.CASES))
def test_each_case_computes_the_same_with_both_layers(case_name):
    # P2's ratio compares two layers in the same model: with the same seed
    # the normzoo and Keras models must compute the same thing, in training
    # (batch statistics, masked or renormalized) and in inference.
    case = p2_batch_norm.CASES[case_name]
    built = p2_batch_norm.build_models(case, TINY)
    inputs, _ = case.batch(TINY)
    for layer in _batch_norms(built["normzoo"]) + _batch_norms(built["keras"]):
        for key, value in case.layer_arguments.items():
            assert layer.get_config()[key] == value
    assert [w.shape for w in built["normzoo"].weights] == [w.shape for w in built["keras"].weights]
    for training in (True, False):
        np.testing.assert_allclose(
            built["normzoo"](inputs, training=training),
            built["keras"](inputs, training=training),
            rtol=1e-5, atol=1e-5,
        )


def test_masked_sequence_statistics_come_from_the_unpadded_positions_only():
    case = p2_batch_norm.CASES["masked_sequence"]
    tokens, _ = case.batch(TINY)
    tokens = tokens.numpy()
    padded = tokens == 0
    assert padded.any() and (~padded).all(axis=1).any() and (~padded[:, 0]).all()
    for name, model in p2_batch_norm.build_models(case, TINY).items():
        if name == "without":
            assert not _batch_norms(model)
            continue
        (layer,) = _batch_norms(model)
        (embedding,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
        values = embedding(tokens).numpy()[~padded]  # (unpadded positions, features)
        model(tokens, training=True)
        momentum = layer.momentum
        np.testing.assert_allclose(layer.moving_mean.numpy(), (1 - momentum) * values.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(
            layer.moving_variance.numpy(), momentum + (1 - momentum) * values.var(axis=0), atol=1e-6
        )


@pytest.mark.parametrize(
    "target, value, met",
    [("<= 1.05", 1.05, True), ("<= 1.05", 1.0501, False), (">= 0.40", 0.4, True), (">= 0.40", 0.39, False),
     ("< 2", 2.0, False), ("< 2", 1.99, True)],
)
def test_met_is_the_target_as_written(target, value, met):
    assert measurement("P0", "x", value, "ratio", target).met is met


def test_a_target_without_a_comparison_is_refused():
    with pytest.raises(ValueError, match="'<= 1.05'"):
        measurement("P0", "x", 1.0, "ratio", "1.05")


@pytest.mark.parametrize(
    "change, setting",
    [({"figures": ("P11",)}, "figures"), ({"layers_modes": ("jit",)}, "layers_modes"),
     ({"layers_cases": ("gru",)}, "layers_cases"), ({"wrn_depths": ("16", "17")}, "wrn_depths"),
     ({"build_model": "resnet51"}, "build_model")],
)
def test_bad_settings_are_named(change, setting):
    with pytest.raises(ValueError, match=f"^{setting}: "):
        dataclasses.replace(Settings(), **change).check()
