"""normzoo.training.timing: the main job's wall-time records."""

import pytest

from normzoo.training import timing


def test_epoch_gaps_leave_out_the_evaluation_between_epochs():
    # Two epochs of two steps; evaluation from 2.5 s to 3.5 s between them.
    trace = timing.RunTrace(
        wall_seconds=10.0,
        steps=[(0.0, 1.0), (1.0, 2.0), (5.0, 6.0), (6.0, 7.0)],
        evals=[(2.5, 3.0), (3.0, 3.5), (7.5, 8.0)],
        steps_per_epoch=2,
        metrics={},
    )
    assert trace.epoch_gaps() == [(5.0 - 2.0) - (3.5 - 2.5)]
    assert trace.step_seconds() == 4.0


def test_main_job_records_time_a_tiny_run_and_its_fit_twin(tiny_config, tmp_path):
    config = tiny_config(tmp_path / "unused")  # trace_run trains in a directory of its own
    records = timing.main_job_records(config, rounds=1)
    assert [r["target"] for r in records] == ["<= 1.25", "<= 1.0", "<= 0.5"]
    steps_ratio, over_fit, gap = records
    details = steps_ratio["details"]
    # The run lasts longer than its steps, which include the first one.
    assert details["wall_seconds"][0] > details["step_seconds"][0] > details["first_step_seconds"][0] > 0
    assert steps_ratio["value"] == pytest.approx(details["wall_seconds"][0] / details["step_seconds"][0])
    assert over_fit["value"] == pytest.approx(
        over_fit["details"]["normzoo_seconds"][0] / over_fit["details"]["fit_seconds"][0]
    )
    assert len(gap["details"]["gaps"][0]) == 1  # one boundary between the 2 epochs
    assert gap["value"] == max(gap["details"]["gaps"][0])
    assert not (tmp_path / "unused").exists()
    for record in records:
        assert record["met"] == {"<= 1.25": record["value"] <= 1.25, "<= 1.0": record["value"] <= 1.0,
                                 "<= 0.5": record["value"] <= 0.5}[record["target"]]
