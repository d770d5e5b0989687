"""The experiment scripts (depth sweep, path lengths, batch-size sensitivity)
run end to end with tiny flags and write their JSON, markdown and PNG."""

import json
import math
import os
import subprocess
import sys

import pytest

from normzoo_lab import path_lengths

_SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "lab")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(script, *flags, check=True):
    return subprocess.run(
        [sys.executable, os.path.join(_SCRIPTS, script), *flags],
        check=check,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )


def test_depth_sweep_selects_each_cells_rate_and_repeats_it_with_the_other_seed(tmp_path):
    output = tmp_path / "results" / "sweep"
    completed = _run(
        "depth_sweep.py", "--depths=10", "--width=1", "--norms=batch,skipinit_rsqrt",
        "--image_size=8", "--batch_size=8", "--epochs=1", "--steps_per_epoch=2",
        "--learning_rates=0.1,0.05", "--seeds=0,1", f"--output={output}",
    )
    # Six runs in one process, each tracing its own functions once: no
    # TensorFlow warning of retracing (it counts the runs' traces together).
    assert "triggered tf.function retracing" not in completed.stderr, completed.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "sweep.json").read_text())
    # The validation split is the last 20% of the training split, the cells
    # train on the rest.
    assert (record["train_split"], record["validation_split"]) == ("train[:1150]", "train[1150:]")
    runs = [(row["norm"], row["learning_rate"], row["seed"]) for row in record["results"]]
    summaries = {summary["norm"]: summary for summary in record["summaries"]}
    for norm in ("batch", "skipinit_rsqrt"):
        selected = summaries[norm]["selected_learning_rate"]
        assert [run for run in runs if run[0] == norm] == [(norm, 0.05, 0), (norm, 0.1, 0), (norm, selected, 1)]
        # The selection is the first seed's best validation accuracy.
        grid = [row for row in record["results"] if row["norm"] == norm and row["seed"] == 0]
        assert selected == max(grid, key=lambda row: row["validation_accuracy"])["learning_rate"]
        at_rate = [row["test_accuracy"] for row in record["results"] if row["norm"] == norm and row["learning_rate"] == selected]
        assert summaries[norm]["test_accuracy"] == pytest.approx(sum(at_rate) / 2)
        assert summaries[norm]["test_accuracy_spread"] == pytest.approx(abs(at_rate[0] - at_rate[1]))
    # Two steps at these rates train every cell (measured); a cell recorded
    # as diverged here would mean a broken run, not a result.
    for row in record["results"]:
        assert row["status"] == "trained", row
        assert 0.0 <= row["validation_accuracy"] <= 1.0 and row["steps"] == 2
        assert math.isfinite(row["final_train_loss"])
        # The run's own stopwatch times parts of the cell's wall time (rounded to 0.1 s).
        spent = row["time_this_run"]
        assert 0 < spent["step_seconds"] + spent["first_step_seconds"] < row["seconds"] + 0.05
    assert [claim["verdict"] for claim in record["claims"]] == ["not tested"] * 3
    table = (tmp_path / "results" / "sweep.md").read_text()
    assert "| WRN-10-1 |" in table and "skipinit_rsqrt" in table and "| claim | verdict |" in table
    assert "Share of the wall time in training steps" in table
    assert (tmp_path / "results" / "sweep.png").read_bytes()[:8] == _PNG_MAGIC


def test_depth_sweep_says_when_a_cell_diverges_at_every_rate(tmp_path):
    # A rate of 1e30 makes the first update overflow: the loss of the next
    # step is not finite, for any of these norms.
    output = tmp_path / "sweep"
    _run(
        "depth_sweep.py", "--depths=10", "--width=1", "--norms=none,skipinit1",
        "--batch_size=8", "--epochs=1", "--steps_per_epoch=3", "--learning_rates=1e30",
        "--seeds=0,1", f"--output={output}",
    )
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert [(row["norm"], row["status"]) for row in record["results"]] == [
        ("none", "diverged"), ("skipinit1", "diverged"),
    ]
    for summary in record["summaries"]:
        assert summary["status"] == "diverged at every rate"
        assert summary["selected_learning_rate"] is None and summary["rates_diverged"] == 1
    assert "| WRN-10-1 | diverged at every rate | diverged at every rate |" in (tmp_path / "sweep.md").read_text()


def test_depth_sweep_rejects_an_unknown_norm(tmp_path):
    result = _run("depth_sweep.py", "--norms=batch,bogus", f"--output={tmp_path / 'x'}", check=False)
    assert result.returncode == 2  # a usage error
    assert "--norms must be a non-empty list of batch, skipinit0, skipinit_rsqrt, skipinit1, none" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_path_lengths_writes_the_exact_shares_and_the_article_check(tmp_path):
    output = tmp_path / "paths"
    _run(
        "path_lengths.py", "--depths=10,50", "--lengths=2,5", "--article_depth=200",
        "--article_length=6", "--monte_carlo_depths=4", "--monte_carlo_width=16",
        "--monte_carlo_batch=32", "--monte_carlo_seeds=1", f"--output={output}",
    )
    record = json.loads((tmp_path / "paths.json").read_text())
    for convention, input_variance in (("counted from 1 (s=1)", 1.0), ("counted from 0 (s=0)", 0.0)):
        assert record["article"]["model"][convention] == pytest.approx(
            path_lengths.share_within(200, 6, input_variance), rel=1e-12
        )
        exact = path_lengths.path_length_distribution(path_lengths.branch_probabilities(50, input_variance))
        assert record["exact_share"]["50"][convention] == pytest.approx(exact.tolist(), abs=1e-15)
    assert len(record["monte_carlo"]["4"]["share"]) == 4 + 2
    assert "| 50 | counted from 1 (s=1) |" in (tmp_path / "paths.md").read_text()
    assert (tmp_path / "paths.png").read_bytes()[:8] == _PNG_MAGIC


def test_batch_size_sensitivity_scales_the_rate_grid_and_the_steps(tmp_path):
    output = tmp_path / "batch"
    _run(
        "batch_size_sensitivity.py", "--model=wrn_10_1", "--batch_sizes=8,16",
        "--norms=layer", "--examples=16", "--image_size=8", "--seeds=0",
        "--learning_rates=0.1,0.2", "--base_batch_size=16", f"--output={output}",
    )
    record = json.loads((tmp_path / "batch.json").read_text())
    grid = {(row["batch_size"], row["learning_rate"]) for row in record["results"] if row["seed"] == 0}
    assert grid == {(8, 0.05), (8, 0.1), (16, 0.1), (16, 0.2)}
    for row in record["results"]:
        assert row["status"] == "trained", row
        assert row["steps"] == 16 // row["batch_size"]
    for summary in record["summaries"]:
        assert summary["learning_rates"] == [0.1 * summary["batch_size"] / 16, 0.2 * summary["batch_size"] / 16]
        assert summary["selected_learning_rate"] in summary["learning_rates"]
        assert len(summary["test_accuracies"]) == 1
    assert [claim["verdict"] for claim in record["claims"]] == ["not tested"] * 3
    assert "| 8 | 2 |" in (tmp_path / "batch.md").read_text()
    assert (tmp_path / "batch.png").read_bytes()[:8] == _PNG_MAGIC


def test_batch_size_sensitivity_rejects_a_batch_larger_than_the_examples(tmp_path):
    result = _run(
        "batch_size_sensitivity.py", "--batch_sizes=32", "--examples=16",
        f"--output={tmp_path / 'x'}", check=False,
    )
    assert result.returncode == 2 and "exceed --examples=16" in result.stderr
