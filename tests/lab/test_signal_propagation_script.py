"""lab/signal_propagation.py writes its PNG and the numbers it plots,
the residual-branch scaling included."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from normzoo import models
from normzoo_lab import signal_propagation

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "lab", "signal_propagation.py")


def test_writes_a_png_and_the_measured_variances(tmp_path):
    output = tmp_path / "figure" / "signals.png"
    flags = [
        "--model=wrn_22_1",
        "--norms=batch,none,skipinit",
        "--batch_size=4",
        "--image_size=8",
        "--seed=3",
    ]
    subprocess.run(
        [sys.executable, _SCRIPT, *flags, f"--output={output}"],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "figure" / "signals.json").read_text())
    assert record["flags"]["model"] == "wrn_22_1"
    assert list(record["results"]) == ["batch", "none", "skipinit"]

    # The numbers are the library's: the same measurement in this process.
    keras.utils.set_random_seed(3)
    model = models.build("wrn_22_1", norm="batch", input_shape=(8, 8, 3))
    images = np.random.default_rng(3).standard_normal((4, 8, 8, 3)).astype("float32")
    expected = signal_propagation.signal_propagation(model, images)
    batch = record["results"]["batch"]
    assert batch["blocks"] == list(expected.blocks)
    np.testing.assert_allclose(batch["skip_variance"], expected.skip_variance, rtol=1e-5)
    np.testing.assert_allclose(batch["branch_variance"], expected.branch_variance, rtol=1e-5)

    # The residual-branch scaling: branch / skip variance per block, and the
    # least-squares slope of log(ratio) on log(i) over the blocks i >= 2 of
    # each stage (three blocks per stage: i = 1, 2, 3).
    ratio = expected.branch_variance / expected.skip_variance
    assert batch["index_in_stage"] == [1, 2, 3] * 3
    np.testing.assert_allclose(batch["branch_to_skip_ratio"], ratio, rtol=1e-5)
    x = np.log([2.0, 3.0] * 3)
    y = np.log(np.concatenate([ratio[1:3], ratio[4:6], ratio[7:9]]))
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    assert batch["branch_scaling_slope"] == pytest.approx(slope, rel=1e-4)
    # SkipInit's branches are zero at initialization: no scaling to fit.
    skipinit = record["results"]["skipinit"]
    assert skipinit["branch_scaling_slope"] is None
    assert skipinit["branch_to_skip_ratio"] == [0.0] * 9
