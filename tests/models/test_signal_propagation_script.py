"""scripts/signal_propagation.py writes its PNG and the numbers it plots."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

from normzoo import models
from normzoo.models import diagnostics

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "signal_propagation.py")


def test_writes_a_png_and_the_measured_variances(tmp_path):
    output = tmp_path / "figure" / "signals.png"
    flags = [
        "--model=wrn_10_1",
        "--norms=batch,none",
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
    assert record["flags"]["model"] == "wrn_10_1"
    assert list(record["results"]) == ["batch", "none"]

    # The numbers are the library's: the same measurement in this process.
    keras.utils.set_random_seed(3)
    model = models.build("wrn_10_1", norm="batch", input_shape=(8, 8, 3))
    images = np.random.default_rng(3).standard_normal((4, 8, 8, 3)).astype("float32")
    expected = diagnostics.signal_propagation(model, images)
    batch = record["results"]["batch"]
    assert batch["blocks"] == list(expected.blocks)
    np.testing.assert_allclose(batch["skip_variance"], expected.skip_variance, rtol=1e-5)
    np.testing.assert_allclose(batch["branch_variance"], expected.branch_variance, rtol=1e-5)
