"""The experiment scripts (depth sweep, path lengths, batch-size sensitivity)
run end to end with tiny flags and write their JSON, markdown and PNG."""

import json
import math
import os
import subprocess
import sys

import pytest

from normzoo.models import path_lengths

_SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(script, *flags, check=True):
    return subprocess.run(
        [sys.executable, os.path.join(_SCRIPTS, script), *flags],
        check=check,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )


def test_depth_sweep_writes_one_row_per_depth_and_norm(tmp_path):
    output = tmp_path / "results" / "sweep"
    _run(
        "depth_sweep.py", "--depths=10", "--width=1", "--norms=batch,skipinit1",
        "--image_size=8", "--batch_size=8", "--epochs=1", "--steps_per_epoch=2",
        f"--output={output}",
    )
    record = json.loads((tmp_path / "results" / "sweep.json").read_text())
    assert [(row["depth"], row["norm"]) for row in record["results"]] == [
        (10, "batch"), (10, "skipinit1"),
    ]
    # Two steps at learning rate 0.05 train every cell (measured); a cell
    # recorded as diverged here would mean a broken run, not a result.
    for row in record["results"]:
        assert row["status"] == "trained", row
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["steps"] == 2
        assert math.isfinite(row["final_train_loss"])
        # The run's own stopwatch times parts of the cell's wall time (rounded to 0.1 s).
        spent = row["time_this_run"]
        assert 0 < spent["step_seconds"] + spent["first_step_seconds"] < row["seconds"] + 0.05
    assert record["flags"]["learning_rate"] == 0.05
    table = (tmp_path / "results" / "sweep.md").read_text()
    assert "| WRN-10-1 |" in table and "skipinit1" in table
    assert "Share of the wall time in training steps" in table


def test_depth_sweep_rejects_an_unknown_norm(tmp_path):
    result = _run("depth_sweep.py", "--norms=batch,bogus", f"--output={tmp_path / 'x'}", check=False)
    assert result.returncode != 0
    assert "--norms must be a non-empty list of batch, skipinit0, skipinit1, none" in result.stderr
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


def test_batch_size_sensitivity_scales_the_learning_rate_and_the_steps(tmp_path):
    output = tmp_path / "batch"
    _run(
        "batch_size_sensitivity.py", "--model=wrn_10_1", "--batch_sizes=8,16",
        "--norms=layer", "--examples=16", "--image_size=8",
        "--base_learning_rate=0.1", "--base_batch_size=16", f"--output={output}",
    )
    record = json.loads((tmp_path / "batch.json").read_text())
    cells = {(row["batch_size"], row["norm"]): row for row in record["results"]}
    assert sorted(cells) == [(8, "layer"), (16, "layer")]
    for (batch_size, _), row in cells.items():
        assert row["learning_rate"] == pytest.approx(0.1 * batch_size / 16)
        assert row["status"] == "trained", row
        assert row["steps"] == 16 // batch_size
    assert "| 8 | 0.05 | 2 |" in (tmp_path / "batch.md").read_text()
    assert (tmp_path / "batch.png").read_bytes()[:8] == _PNG_MAGIC


def test_batch_size_sensitivity_rejects_a_batch_larger_than_the_examples(tmp_path):
    result = _run(
        "batch_size_sensitivity.py", "--batch_sizes=32", "--examples=16",
        f"--output={tmp_path / 'x'}", check=False,
    )
    assert result.returncode != 0 and "exceed --examples=16" in result.stderr
