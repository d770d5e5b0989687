"""lab/benchmark.py --quick runs every figure end to end and writes its
table and numbers; the invariants that are not timings hold."""

import json
import math
import os
import subprocess
import sys

import pytest

_SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "lab")
FIGURES = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11", "P12", "P13")
P2_MODELS = {
    "conv_net": "conv net step time, normzoo BatchNorm / keras BatchNormalization",
    "conv_net_renorm": "conv net step time, normzoo BatchNorm(renorm=True) / keras BatchNormalization(renorm=True)",
    "masked_sequence": "masked sequence net (Embedding(mask_zero=True) -> BatchNorm -> LSTM) step time, "
    "normzoo BatchNorm / keras BatchNormalization",
}


def _run(script, output_dir, *flags):
    completed = subprocess.run(
        [sys.executable, os.path.join(_SCRIPTS, script), "--quick", f"--output_dir={output_dir}", *flags],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("benchmarks")
    _run("benchmark.py", output_dir)
    markdown = (output_dir / "BENCHMARKS.md").read_text()
    return json.loads((output_dir / "benchmark.json").read_text()), markdown


def test_every_figure_is_measured_with_finite_values(record):
    record, markdown = record
    by_figure = {}
    for measurement in record["measurements"]:
        by_figure.setdefault(measurement["figure"], []).append(measurement)
        assert math.isfinite(measurement["value"]), measurement
        assert isinstance(measurement["met"], bool)
        assert measurement["name"] in markdown
    assert sorted(by_figure) == sorted(FIGURES)
    assert len(by_figure["P5"]) == 2  # restore and build
    assert record["config"]["quick"] is True


def test_the_machine_is_stated(record):
    record, markdown = record
    machine = record["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0
    assert machine["tensorflow"] in markdown and machine["keras"] in markdown
    assert "TF_ENABLE_ONEDNN_OPTS=" in markdown
    assert machine["cpu"] in markdown


def test_p10_times_both_layers_under_jax(record):
    record, _ = record
    (p10,) = [m for m in record["measurements"] if m["figure"] == "P10"]
    details = p10["details"]
    assert details["machine"]["keras_backend"] == "jax" and details["machine"]["jax"]
    assert details["normzoo_step_ms"] > 0 and details["keras_step_ms"] > 0
    assert p10["value"] == pytest.approx(details["normzoo_step_ms"] / details["keras_step_ms"])


def test_folded_resnet50_computes_what_the_unfolded_one_does(record):
    record, _ = record
    for measurement in record["measurements"]:
        if measurement["figure"] == "P3":
            details = measurement["details"]
            # float32 rounding through the 53 folded convolutions of ResNet-50
            assert details["max_abs_output_difference"] <= 1e-3 * max(1.0, details["max_abs_output"])


def test_flop_count_agrees_with_the_profiler_and_restore_is_exact(record):
    record, _ = record
    for measurement in record["measurements"]:
        details = measurement["details"]
        if measurement["figure"] == "P6":
            # The analytic count (convolutions and dense layers, from their
            # shapes) and TensorFlow's profiler count the same operations.
            assert details["forward_multiply_adds_per_image"] == details[
                "profiled_forward_multiply_adds_per_image"
            ]
        if measurement["figure"] == "P5" and "all_variables_identical" in details:
            assert details["all_variables_identical"] and details["verified"]
            assert details["restored_variables"] == details["variables"]


def test_depth_fit_has_a_residual_per_depth(record):
    record, _ = record
    depths = [row["model"] for row in record["wrn_depths"]]
    assert depths == [f"wrn_{n}_2" for n in sorted(int(d) for d in record["config"]["wrn_depths"])]
    for measurement in record["measurements"]:
        if measurement["figure"] == "P7":
            assert list(measurement["details"]["residual_seconds"]) == depths


def test_batch_norm_rows_cover_every_model_and_mode(record):
    # P2: the default path, renorm and a masked sequence model, each
    # normzoo / Keras in every mode, against the same target as the default.
    record, markdown = record
    rows = {m["name"]: m for m in record["measurements"] if m["figure"] == "P2"}
    modes = record["config"]["layers_modes"]
    assert sorted(rows) == sorted(f"{name} ({mode})" for name in P2_MODELS.values() for mode in modes)
    for row in rows.values():
        assert row["target"] == "<= 1.05" and row["met"] == (row["value"] <= 1.05)
        assert row["value"] == pytest.approx(row["details"]["normzoo_step_ms"] / row["details"]["keras_step_ms"])
    masked = [row for row in rows.values() if row["details"]["case"] == "masked_sequence"]
    assert all(math.isfinite(row["details"]["without_batch_norm_step_ms"]) for row in masked)
    assert "ms without the layer" in markdown


def test_replica_statistics_figure_compares_the_same_steps_and_replicas_agree(record):
    # P8: with the replicas' average every replica gives the same samples the
    # same logits; with its own drifted copy of the statistics it does not.
    record, _ = record
    rows = [m for m in record["measurements"] if m["figure"] == "P8"]
    assert len(rows) == 2
    details = rows[0]["details"]
    assert details["replica_logits_gap_with_average"] == 0.0
    assert details["replica_logits_gap_without_average"] > 1e-3
    inference = details["inference"]
    assert rows[0]["value"] == pytest.approx(inference["with_ms"] / inference["without_ms"])


def test_main_job_figure_times_whole_runs_and_their_fit_twin(record):
    # P9: each row is computed from the samples it shows; a run's steps are
    # part of its wall time, and a run of E epochs has E - 1 epoch boundaries.
    record, _ = record
    config = record["config"]
    rows = [m for m in record["measurements"] if m["figure"] == "P9"]
    assert [row["target"] for row in rows] == ["<= 1.25", "<= 1.0", "<= 0.5", "<= 0.5"]
    steps_ratio, over_fit, gap, mirrored_gap = rows
    for run in steps_ratio["details"]["runs"] + mirrored_gap["details"]["runs"]:
        assert run["wall_seconds"] > run["step_seconds"] > run["first_step_seconds"] > 0
        assert run["steps"] == config["main_job_epochs"] * config["main_job_steps_per_epoch"]
        assert len(run["epoch_gaps"]) == config["main_job_epochs"] - 1
        # Every epoch wrote its checkpoint, within the epoch's records.
        assert len(run["epoch_checkpoint_seconds"]) == config["main_job_epochs"]
        assert all(seconds > 0 for seconds in run["epoch_checkpoint_seconds"])
        # The loop's own timing of each evaluation holds its step calls.
        assert all(seconds >= 0 for seconds in run["epoch_eval_outside_steps_seconds"])
    assert steps_ratio["details"]["ratios"] == [r["wall_seconds"] / r["step_seconds"] for r in steps_ratio["details"]["runs"]]
    assert over_fit["value"] == pytest.approx(
        over_fit["details"]["normzoo_seconds"][0] / over_fit["details"]["fit_seconds"][0]
    )
    assert gap["value"] == max(gap["details"]["runs"][0]["epoch_gaps"])
    assert mirrored_gap["details"]["replicas"] == 2
    assert mirrored_gap["value"] == max(mirrored_gap["details"]["runs"][0]["epoch_gaps"])


def test_fashion_mnist_figure_times_one_epoch_of_each_side(record):
    # P12: the ratio is the medians' of the samples it shows; images/s are
    # the epoch's images over each sample; normzoo's run holds its steps.
    record, markdown = record
    config = record["config"]
    (row,) = [m for m in record["measurements"] if m["figure"] == "P12"]
    details = row["details"]
    assert row["target"] == "<= 1.0" and "Fashion-MNIST" in row["name"]
    assert details["images"] == config["fashion_steps_per_epoch"] * config["fashion_batch_size"]
    assert details["test_images"] == 10000
    assert row["value"] == pytest.approx(details["normzoo_seconds"][0] / details["fit_seconds"][0])
    assert details["fit_images_per_second"] == [details["images"] / s for s in details["fit_seconds"]]
    (run,) = details["runs"]
    assert run["steps"] == config["fashion_steps_per_epoch"]
    assert run["wall_seconds"] == details["normzoo_seconds"][0] > run["step_seconds"] > 0
    assert f"{details['normzoo_images_per_second'][0]:.0f} vs" in markdown


def test_bandwidth_figure_covers_every_backend_with_bandwidths_from_its_times(record):
    # P13: a normzoo / Keras row per mode (TensorFlow's in this process, JAX's
    # and PyTorch's in their own), each ratio and bandwidth computed from the
    # times it shows, the fraction from the copy measured in the same run;
    # and normzoo's XLA step against its graph step.
    record, markdown = record
    config = record["config"]
    rows = {row["mode"]: row for row in record["batch_norm_bandwidth"]}
    assert list(rows) == config["bandwidth_modes"]
    shape = [config["bandwidth_batch_size"], config["bandwidth_image_size"], config["bandwidth_image_size"],
             config["bandwidth_channels"]]
    num_bytes = 8 * math.prod(shape) * 4
    measured = [m for m in record["measurements"] if m["figure"] == "P13"]
    assert len(measured) == len(rows) + 1
    for m, row in zip(measured, rows.values()):
        assert m["target"] == "<= 1.0" and m["details"] == row
        assert row["shape"] == shape and row["bytes_moved"] == num_bytes
        assert m["value"] == pytest.approx(row["normzoo_ms"] / row["keras_ms"])
        assert row["normzoo_gb_per_s"] == pytest.approx(num_bytes / (row["normzoo_ms"] * 1e6))
        assert row["copy_gb_per_s"] == pytest.approx(2 * math.prod(shape) * 4 / (row["copy_ms"] * 1e6))
        assert row["fraction_of_copy_bandwidth"] == pytest.approx(row["normzoo_gb_per_s"] / row["copy_gb_per_s"])
        assert row["profile"]
    assert rows["jax"]["versions"]["jax"] and rows["torch"]["versions"]["torch"]
    xla_over_graph = measured[-1]
    assert xla_over_graph["value"] == pytest.approx(rows["xla"]["normzoo_ms"] / rows["graph"]["normzoo_ms"])
    assert "## P13: BatchNorm training forward + backward" in markdown


def test_benchmark_layers_measures_the_batch_norm_figure_alone(tmp_path):
    _run("benchmark_layers.py", tmp_path, "--layers_cases=conv_net_renorm")
    record = json.loads((tmp_path / "benchmark_layers.json").read_text())
    assert record["complete"] and record["config"]["figures"] == ["P2"]
    assert [m["name"] for m in record["measurements"]] == [
        f"{P2_MODELS['conv_net_renorm']} ({mode})" for mode in record["config"]["layers_modes"]
    ]
    assert "lab/benchmark_layers.py" in (tmp_path / "BENCHMARK_LAYERS.md").read_text()
