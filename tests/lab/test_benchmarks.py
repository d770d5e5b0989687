"""normzoo_lab.benchmarks: what P2 compares is the same computation in both
libraries (checked against Keras and NumPy), targets are checked as
written, and bad settings name themselves. No timings are asserted."""

import dataclasses

import keras
import numpy as np
import pytest

import math

from normzoo_lab.benchmarks import Settings, measurement, p2_batch_norm, p9_main_job
from normzoo_lab.benchmarks import p13_batch_norm_bandwidth as p13
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
     ({"build_model": "resnet51"}, "build_model"), ({"fashion_model": "resnet51"}, "fashion_model"),
     ({"bandwidth_modes": ("graph", "cuda")}, "bandwidth_modes")],
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


P13_TINY = Settings(bandwidth_batch_size=2, bandwidth_image_size=3, bandwidth_channels=5,
                    bandwidth_modes=("graph", "xla"), bandwidth_rounds=2, bandwidth_steps_per_round=1)


def test_p13_bytes_are_eight_passes_of_the_tensor():
    # Forward: x read twice, y written; backward: dy and x read twice, dx
    # written. 4 bytes per float32.
    assert p13.bytes_moved((2, 3, 3, 5)) == (3 + 5) * 2 * 3 * 3 * 5 * 4
    assert p13.bytes_moved((2, 3, 3, 5), passes=p13.COPY_PASSES) == 2 * 90 * 4
    assert p13.gigabytes_per_second(3e9, 1.5) == 2.0


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_p13_both_layers_take_the_same_training_step(mode):
    # The figure compares two layers doing the same work: the same output,
    # the same gradients of x, gamma and beta, the same moving statistics.
    shape = p13.tensor_shape(P13_TINY)
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    x = 3.0 + 2.0 * x
    results = {}
    for name, batch_norm in p13.BATCH_NORMS.items():
        layer = batch_norm()
        step, args = p13.make_step(mode, layer, shape, x, dy)
        outputs = [np.asarray(t) for t in step(*args)]
        results[name] = outputs + [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    for normzoo, keras_value in zip(results["normzoo"], results["keras"], strict=True):
        np.testing.assert_allclose(normzoo, keras_value, rtol=1e-4, atol=1e-4)
    # The moving mean moved towards the batch's mean (momentum 0.99).
    np.testing.assert_allclose(results["normzoo"][4], 0.01 * x.mean(axis=(0, 1, 2)), rtol=1e-4)


def test_p13_rows_report_times_ratios_and_bandwidths():
    rows = p13.measure_in_process(P13_TINY)
    assert sorted(rows) == ["graph", "xla"]
    elements = 2 * 3 * 3 * 5
    for mode, row in rows.items():
        assert row["mode"] == mode and row["shape"] == [2, 3, 3, 5]
        assert row["normzoo_ms"] > 0 and row["keras_ms"] > 0
        assert row["ratio"] == pytest.approx(row["normzoo_ms"] / row["keras_ms"])
        low, high = row["ratio_range_over_rounds"]
        assert low <= high
        assert row["bytes_moved"] == 8 * elements * 4
        # bytes / seconds, in GB/s, from the times in milliseconds.
        assert row["normzoo_gb_per_s"] == pytest.approx(8 * elements * 4 / (row["normzoo_ms"] * 1e6))
        assert row["keras_gb_per_s"] == pytest.approx(8 * elements * 4 / (row["keras_ms"] * 1e6))
        ops = row["profile"]
        assert 0 < len(ops) <= p13.TOP_OPS
        shares = [op["share"] for op in ops]
        assert shares == sorted(shares, reverse=True) and 0 < math.fsum(shares) <= 1 + 1e-9
    # Under XLA the profile names XLA's fusions, in graph mode TensorFlow's ops.
    assert any("FusedBatchNorm" in op["op"] for op in rows["graph"]["profile"])
    copy = p13.copy_bandwidth((2, 3, 3, 5), [0.5e-6, 1e-6, 4e-6])
    assert copy["copy_ms"] == 1e-3
    assert copy["copy_gb_per_s"] == pytest.approx(2 * elements * 4 / 1e-6 / 1e9)
    row = p13.bandwidth_row(rows["graph"], copy)
    assert row["fraction_of_copy_bandwidth"] == pytest.approx(row["normzoo_gb_per_s"] / copy["copy_gb_per_s"])
