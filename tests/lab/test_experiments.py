"""normzoo_lab.experiments: grid cells, divergence, learning-rate selection,
claims, tables and result files."""

import json
import math

import numpy as np
import pytest

from normzoo import data, models
from normzoo_lab import experiments
from normzoo.models import wide_resnet
from normzoo.training import TrainConfig, loop


def test_a_diverged_cell_is_recorded_not_raised(monkeypatch):
    seen = {}

    def diverge(config):
        seen["model_dir"] = config.run.model_dir
        raise loop.TrainingDiverged("The training loss became nan at step 3")

    monkeypatch.setattr(loop, "train", diverge)
    row = experiments.run_cell({"depth": 16, "norm": "none"}, TrainConfig.from_flat(model_dir="unused"), log=None)
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
    base = TrainConfig.from_flat(model="wrn_16_2", learning_rate=0.3)
    config = experiments.with_norm(base, "skipinit1", batch_size=8)
    assert (config.model.norm, config.model.skipinit_alpha, config.optimization.batch_size) == ("skipinit", 1.0, 8)
    assert config.optimization.learning_rate == 0.3 and base.model.norm == "batch"
    assert experiments.with_norm(config, "batch").model.skipinit_alpha is None
    with pytest.raises(ValueError, match="skipinit0"):
        experiments.with_norm(base, "skipinit2")


def test_skipinit_rsqrt_starts_alpha_at_one_over_sqrt_of_the_blocks_of_the_built_model():
    # The reference: the SkipInit scalars of the model itself, counted.
    model = models.build("wrn_16_1", norm="skipinit", input_shape=(8, 8, 1))
    alphas = [v for v in model.weights if v.path.endswith("alpha")]
    assert wide_resnet.num_blocks(16) == len(alphas) == 6
    config = experiments.with_norm(TrainConfig(), "skipinit_rsqrt", num_blocks=len(alphas))
    assert (config.model.norm, config.model.skipinit_alpha) == ("skipinit", pytest.approx(1 / math.sqrt(6)))
    with pytest.raises(ValueError, match="num_blocks"):
        experiments.with_norm(TrainConfig(), "skipinit_rsqrt")


def _examples(split):
    """(images, labels) of `split` of digits, in the evaluation order."""
    batches = data.load("digits", split, global_batch_size=256, training=False)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in batches])
    return np.concatenate(images), np.concatenate(labels)


def test_validation_split_is_deterministic_disjoint_and_the_rest_of_the_training_split():
    train_split, validation_split = experiments.validation_splits("digits", 0.2)
    assert (train_split, validation_split) == experiments.validation_splits("digits", 0.2)
    total = data.info("digits").train_examples
    trained, held_out = data.num_examples("digits", train_split), data.num_examples("digits", validation_split)
    assert trained + held_out == total and held_out == round(0.2 * total)
    # By position: the two parts, in order, are exactly the whole "train"
    # split, so no example is in both and the test split is in neither.
    whole = _examples("train")
    first, last = _examples(train_split), _examples(validation_split)
    for index in range(2):
        np.testing.assert_array_equal(np.concatenate([first[index], last[index]]), whole[index])
    np.testing.assert_array_equal(_examples(validation_split)[0], last[0])
    with pytest.raises(ValueError, match="fraction"):
        experiments.validation_splits("digits", 0.0)


def test_training_reads_only_the_train_split_of_the_config(monkeypatch):
    train_split, validation_split = experiments.validation_splits("digits", 0.5)
    loads = []
    original = data.load

    def recording_load(name, split, **kwargs):
        loads.append((split, kwargs["training"]))
        return original(name, split, **kwargs)

    monkeypatch.setattr(data, "load", recording_load)
    config = TrainConfig.from_flat(
        model="wrn_10_1", image_size=8, batch_size=256, epochs=1, train_split=train_split,
        verbose=False,
    )
    row = experiments.run_cell({}, config, validation_split=validation_split, log=None)
    assert row["status"] == experiments.TRAINED
    # steps_per_epoch follows the slice: 718 examples in batches of 256.
    assert row["steps"] == data.num_examples("digits", train_split) // 256 == 2
    assert {split for split, training in loads if training} == {train_split}
    assert (validation_split, False) in loads
    assert 0.0 <= row["validation_accuracy"] <= 1.0


def _run(rate, seed, validation_accuracy, test_accuracy, status="trained", **labels):
    return {
        **labels,
        "learning_rate": rate,
        "seed": seed,
        "status": status,
        "validation_accuracy": validation_accuracy if status == "trained" else None,
        "validation_loss": 1.0 - validation_accuracy if status == "trained" else None,
        "test_accuracy": test_accuracy if status == "trained" else None,
        "seconds": 1.0,
        # A share of the wall time in training steps of 2 * rate + 0.1.
        "time_this_run": {"step_seconds": 2 * rate, "input_wait_seconds": 0.1} if status == "trained" else None,
    }


def test_select_rate_takes_the_best_validation_accuracy_not_the_best_test_accuracy():
    runs = [
        _run(0.05, 0, 0.80, 0.99),
        _run(0.1, 0, 0.90, 0.70),
        _run(0.2, 0, 0.0, 0.0, status="diverged"),
    ]
    assert experiments.select_rate(runs)["learning_rate"] == 0.1
    # A tie in accuracy goes to the lower validation loss, then the lower rate.
    tied = [_run(0.1, 0, 0.9, 0.5), _run(0.05, 0, 0.9, 0.5)]
    assert experiments.select_rate(tied)["learning_rate"] == 0.05
    tied[1]["validation_loss"] = 0.2
    assert experiments.select_rate(tied)["learning_rate"] == 0.1
    assert experiments.select_rate([_run(0.1, 0, 0, 0, status="diverged")]) is None


def test_run_rate_grid_trains_every_rate_then_the_other_seeds_at_the_selected_one(monkeypatch):
    calls = []

    def fake_run_cell(labels, config, *, validation_split, log):
        rate, seed = config.optimization.learning_rate, config.run.seed
        calls.append((labels["norm"], rate, seed, validation_split))
        assert labels["learning_rate"] == rate and labels["seed"] == seed
        if labels["norm"] == "none":
            return _run(rate, seed, 0, 0, status="diverged", norm="none")
        # Validation accuracy peaks at rate 0.1.
        accuracy = 1.0 - abs(math.log2(rate / 0.1)) / 10
        return _run(rate, seed, accuracy, accuracy, norm=labels["norm"])

    monkeypatch.setattr(experiments, "run_cell", fake_run_cell)
    rates = [0.05, 0.1, 0.2]
    cells = [({"norm": "batch"}, TrainConfig(), rates), ({"norm": "none"}, TrainConfig(), rates)]
    rows = experiments.run_rate_grid(cells, [3, 4], validation_split="train[90%:]", log=None)
    assert calls == [
        ("batch", 0.05, 3, "train[90%:]"), ("batch", 0.1, 3, "train[90%:]"),
        ("batch", 0.2, 3, "train[90%:]"), ("batch", 0.1, 4, "train[90%:]"),
        ("none", 0.05, 3, "train[90%:]"), ("none", 0.1, 3, "train[90%:]"),
        ("none", 0.2, 3, "train[90%:]"),
    ]
    assert len(rows) == len(calls)


def test_summarize_reports_the_selected_rate_the_mean_and_spread_over_seeds():
    rows = [
        _run(0.05, 0, 0.80, 0.81, depth=16, norm="batch"),
        _run(0.1, 0, 0.90, 0.92, depth=16, norm="batch"),
        _run(0.2, 0, 0.85, 0.95, depth=16, norm="batch"),
        _run(0.1, 1, 0.88, 0.88, depth=16, norm="batch"),
        _run(0.05, 0, 0, 0, status="diverged", depth=16, norm="none"),
        _run(0.1, 0, 0, 0, status="diverged", depth=16, norm="none"),
    ]
    batch, none = experiments.summarize(rows, ["depth", "norm"])
    assert (batch["depth"], batch["norm"], batch["status"]) == (16, "batch", "trained")
    assert batch["selected_learning_rate"] == 0.1 and batch["selected_at_edge"] is False
    assert batch["test_accuracies"] == [0.92, 0.88]
    assert batch["test_accuracy"] == pytest.approx(0.90)
    assert batch["test_accuracy_spread"] == pytest.approx(0.04)
    assert (batch["validation_accuracy"], batch["rates_diverged"], batch["seconds"]) == (0.90, 0, 4.0)
    assert none["status"] == experiments.DIVERGED_AT_EVERY_RATE == "diverged at every rate"
    assert none["selected_learning_rate"] is None and none["test_accuracy"] is None
    assert none["rates_diverged"] == 2
    markdown = experiments.grid_markdown(rows, [batch, none], "depth", "norm", ["depth"], lambda d: [d], [])
    assert "| 16 | 0.9000 | diverged at every rate |" in markdown
    assert "| 16 batch | 0.8000 | 0.9000 | 0.8500 |" in markdown
    assert "| 16 none | diverged | diverged | - |" in markdown
    share = markdown.split("Share of the wall time in training steps by learning rate")[1]
    assert "| 16 batch | 0.2000 | 0.3000 | 0.5000 |" in share and "| 16 none | - | - | - |" in share


def _depth_sweep_json(accuracy, rates=(0.05, 0.1, 0.2)):
    """A depth sweep's result JSON: per (depth, norm) the test accuracy of
    both seeds at the rate 0.1 that validation selects (None: diverged at
    every rate)."""
    rows = []
    for (depth, norm), value in accuracy.items():
        for rate in rates:
            if value is None:
                rows.append(_run(rate, 0, 0, 0, status="diverged", depth=depth, norm=norm))
            else:
                validation = 0.9 if rate == 0.1 else 0.5
                rows.append(_run(rate, 0, validation, value[0] if rate == 0.1 else 0.3, depth=depth, norm=norm))
        if value is not None:
            rows.append(_run(0.1, 1, 0.9, value[1], depth=depth, norm=norm))
    return json.loads(json.dumps({"results": rows}))


def test_depth_claims_from_a_synthetic_result_with_known_verdicts():
    record = _depth_sweep_json({
        # Parity: SkipInit 0.01 behind at 16, 0.03 behind (beyond 0.02) at 100.
        (16, "batch"): (0.95, 0.97), (16, "skipinit0"): (0.95, 0.95),
        (100, "batch"): (0.94, 0.94), (100, "skipinit0"): (0.90, 0.92),
        # alpha = 1/sqrt(d) within 0.02 of alpha = 0 at both depths.
        (16, "skipinit_rsqrt"): (0.96, 0.96), (100, "skipinit_rsqrt"): (0.92, 0.90),
        # alpha = 1 trains at 16 and diverges at 100; none fails at both.
        (16, "skipinit1"): (0.80, 0.80), (100, "skipinit1"): None,
        (16, "none"): (0.20, 0.20), (100, "none"): (0.10, 0.10),
    })
    summaries = experiments.summarize(record["results"], ["depth", "norm"])
    parity, failing, rsqrt = experiments.depth_claims(summaries, batch_size=32, margin=0.02)
    assert parity["verdict"] == experiments.DISAGREES
    assert "batch 0.960, skipinit0 0.950 (difference +0.010)" in parity["numbers"]
    assert "batch 0.940, skipinit0 0.910 (difference +0.030)" in parity["numbers"]
    assert failing["verdict"] == experiments.AGREES
    assert "skipinit1 fails from depth 100 (test accuracy by depth 16: 0.800, 100: diverged)" in failing["numbers"]
    assert "none fails from depth 16" in failing["numbers"]
    assert rsqrt["verdict"] == experiments.AGREES
    # Each verdict shows the spread over seeds of the cells it reads.
    assert parity["spread"] == "depth 16: batch 0.020, skipinit0 0.000; depth 100: batch 0.000, skipinit0 0.020"
    assert failing["spread"] == "depth 16: skipinit1 0.000, none 0.000; depth 100: none 0.000"
    # The margin decides: 0.035 makes parity hold.
    assert experiments.depth_claims(summaries, batch_size=32, margin=0.035)[0]["verdict"] == experiments.AGREES
    # The article's parity is for batches <= 64; alpha = 1 training at the
    # deepest depth contradicts "fails as depth grows".
    assert experiments.depth_claims(summaries, batch_size=128)[0]["verdict"] == experiments.NOT_TESTED
    record = _depth_sweep_json({(16, "skipinit1"): None, (100, "skipinit1"): (0.9, 0.9)})
    summaries = experiments.summarize(record["results"], ["depth", "norm"])
    parity, failing, rsqrt = experiments.depth_claims(summaries, batch_size=32)
    assert (parity["verdict"], failing["verdict"], rsqrt["verdict"]) == (
        experiments.NOT_TESTED, experiments.DISAGREES, experiments.NOT_TESTED,
    )


def test_batch_size_claims_from_a_synthetic_result_with_known_verdicts():
    # Selected rates: BatchNorm's grow 4x per 4x of batch (slope 1 in
    # log2-log2), SkipInit's 2x (slope 0.5); BatchNorm's lead grows
    # 0.00 -> 0.02 -> 0.04 (slope +0.01 per doubling over log2 sizes 1, 3, 5).
    # LayerNorm beats BatchNorm at 2, loses at 8.
    selected = {"batch": {2: 0.01, 8: 0.04, 32: 0.16}, "skipinit0": {2: 0.01, 8: 0.02, 32: 0.04}}
    accuracy = {"batch": {2: 0.90, 8: 0.94, 32: 0.96}, "skipinit0": {2: 0.90, 8: 0.92, 32: 0.92},
                "layer": {2: 0.92, 8: 0.93}}
    rows = []
    for norm, by_size in accuracy.items():
        for size, value in by_size.items():
            rate = selected.get(norm, {}).get(size, 0.05)
            rows.append(_run(rate, 0, 0.9, value, batch_size=size, norm=norm))
            rows.append(_run(rate * 2, 0, 0.5, 0.1, batch_size=size, norm=norm))
    summaries = experiments.summarize(json.loads(json.dumps(rows)), ["batch_size", "norm"])
    rates, lead, small = experiments.batch_size_claims(summaries, small_batch=8)
    assert rates["verdict"] == experiments.AGREES
    assert "BatchNorm 1.00, SkipInit 0.50" in rates["numbers"]
    assert lead["verdict"] == experiments.AGREES
    assert "2: +0.000, 8: +0.020, 32: +0.040; slope +0.0100" in lead["numbers"]
    assert small["verdict"] == experiments.DISAGREES
    assert "batch 2: LayerNorm 0.920, BatchNorm 0.900 (+0.020)" in small["numbers"]
    assert "batch 8: LayerNorm 0.930, BatchNorm 0.940 (-0.010)" in small["numbers"]
    assert experiments.batch_size_claims(summaries, small_batch=2)[2]["verdict"] == experiments.AGREES
    assert small["spread"] == "batch size 2: layer 0.000, batch 0.000; batch size 8: layer 0.000, batch 0.000"
    table = experiments.claims_table([rates])
    assert table.splitlines()[2].startswith(f"| {rates['claim']} | agrees | slope of log2(rate)")
    assert table.splitlines()[2].endswith(f"| {rates['spread']} |")
