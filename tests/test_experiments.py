"""normzoo.experiments: grid cells, divergence, tables and result files."""

import json

import pytest

from normzoo import experiments
from normzoo.training import TrainConfig, loop


def test_a_diverged_cell_is_recorded_not_raised(monkeypatch):
    seen = {}

    def diverge(config):
        seen["model_dir"] = config.model_dir
        raise loop.TrainingDiverged("The training loss became nan at step 3")

    monkeypatch.setattr(loop, "train", diverge)
    row = experiments.run_cell({"depth": 16, "norm": "none"}, TrainConfig(model_dir="unused"), log=None)
    assert row["status"] == experiments.DIVERGED
    assert row["test_accuracy"] is None and row["final_train_loss"] is None
    assert "nan at step 3" in row["error"]
    assert row["depth"] == 16 and row["norm"] == "none"
    assert row["time_this_run"] is None
    # Every cell trains in a fresh temporary directory, never the config's.
    assert seen["model_dir"] != "unused"


def test_a_trained_cell_reports_the_last_epoch(monkeypatch):
    history = [
        {"epoch": 0, "train_loss": 2.0, "train_accuracy": 0.3},
        {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8},
    ]
    time_this_run = {"wall_seconds": 3.0, "step_seconds": 1.5, "input_wait_seconds": 0.1}
    metrics = {"history": history, "test_accuracy": 0.75, "test_loss": 0.9, "steps": 20,
               "time_this_run": time_this_run}
    monkeypatch.setattr(loop, "train", lambda config: loop.TrainResult(model=None, metrics=metrics))
    lines = []
    row = experiments.run_cell({"norm": "batch"}, TrainConfig(), log=lines.append)
    assert row["status"] == experiments.TRAINED
    assert (row["final_train_loss"], row["final_train_accuracy"]) == (0.5, 0.8)
    assert (row["test_accuracy"], row["steps"]) == (0.75, 20)
    assert row["time_this_run"] == time_this_run
    assert lines and "norm=batch" in lines[0] and "0.7500" in lines[0]


def test_pivot_and_markdown_table():
    rows = [
        {"depth": 16, "norm": "batch", "accuracy": 0.9},
        {"depth": 16, "norm": "none", "accuracy": None},
        {"depth": 40, "norm": "batch", "accuracy": 0.8},
    ]
    depths, norms, cells = experiments.pivot(rows, "depth", "norm", lambda row: row["accuracy"])
    assert (depths, norms) == ([16, 40], ["batch", "none"])
    assert cells == [[0.9, None], [0.8, None]]
    table = experiments.markdown_table(["depth", *norms], [[d, *c] for d, c in zip(depths, cells)])
    sections = [("Accuracy", lambda row: row["accuracy"])]
    titled = experiments.pivot_tables(rows, "depth", "norm", ["depth"], lambda d: [d], sections)
    assert titled == f"Accuracy:\n\n{table}"
    assert table.splitlines() == [
        "| depth | batch | none |",
        "|---|---|---|",
        "| 16 | 0.9000 | - |",
        "| 40 | 0.8000 | - |",
    ]


def test_write_results_writes_json_and_markdown(tmp_path):
    prefix = tmp_path / "new" / "sweep"
    json_path, markdown_path = experiments.write_results(str(prefix), {"a": [1, 2]}, "| x |\n")
    assert json.loads(open(json_path).read()) == {"a": [1, 2]}
    assert open(markdown_path).read() == "| x |\n"


@pytest.mark.parametrize("value, text", [(float("nan"), "-"), (None, "-"), (3, "3"), (0.5, "0.5000")])
def test_format_value(value, text):
    assert experiments.format_value(value) == text


def test_with_norm_sets_the_normalization_and_other_fields():
    base = TrainConfig(model="wrn_16_2", learning_rate=0.3)
    config = experiments.with_norm(base, "skipinit1", batch_size=8)
    assert (config.norm, config.skipinit_alpha, config.batch_size) == ("skipinit", 1.0, 8)
    assert config.learning_rate == 0.3 and base.norm == "batch"
    assert experiments.with_norm(config, "batch").skipinit_alpha is None
    with pytest.raises(ValueError, match="skipinit0"):
        experiments.with_norm(base, "skipinit2")
