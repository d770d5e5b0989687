"""normzoo_lab.benchmarks: what P2 compares is the same computation in both
libraries (checked against Keras and NumPy), targets are checked as
written, and bad settings name themselves. No timings are asserted."""

import dataclasses

import keras
import numpy as np
import pytest

from normzoo_lab.benchmarks import Settings, measurement, p2_batch_norm, p9_main_job
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
    [({"figures": ("P99",)}, "figures"), ({"layers_modes": ("jit",)}, "layers_modes"),
     ({"layers_cases": ("gru",)}, "layers_cases"), ({"wrn_depths": ("16", "17")}, "wrn_depths"),
     ({"build_model": "resnet51"}, "build_model"), ({"fashion_model": "resnet51"}, "fashion_model")],
)
def test_bad_settings_are_named(change, setting):
    with pytest.raises(ValueError, match=f"^{setting}: "):
        dataclasses.replace(Settings(), **change).check()


def test_epoch_gaps_leave_out_the_evaluation_between_epochs():
    # P9: two epochs of two steps, evaluated from 2.5 s to 3.5 s between them
    # and from 7.5 s to 8 s after the last; the gap is the 3 s between steps
    # less that 1 s. The run's stopwatch timed 1.5 s and 0.7 s of evaluation.
    trace = p9_main_job.RunTrace(
        wall_seconds=10.0,
        steps=[(0.0, 1.0), (1.0, 2.0), (5.0, 6.0), (6.0, 7.0)],
        evals=[(2.5, 3.0), (3.0, 3.5), (7.5, 8.0)],
        steps_per_epoch=2,
        history=[{"eval_seconds": 1.5, "checkpoint_seconds": 0.25, "input_wait_seconds": 0.0},
                 {"eval_seconds": 0.75, "checkpoint_seconds": 0.25, "input_wait_seconds": 0.0}],
    )
    assert trace.evaluation_spans() == [1.0, 0.5]
    assert trace.epoch_gaps() == [(5.0 - 2.0) - (3.5 - 2.5)]
    assert trace.step_seconds() == 4.0
    summary = trace.summary()
    assert summary["epoch_eval_outside_steps_seconds"] == [1.5 - 1.0, 0.75 - 0.5]
    assert summary["first_step_seconds"] == 1.0 and summary["steps"] == 4
