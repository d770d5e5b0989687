"""The checkpoints shipped with normzoo restore by name, as the files of the
repository's checkpoints/ do: compared with Keras' own `load_weights` of
those files and with their manifest."""

import json
import pathlib

import numpy as np
import pytest

import normzoo
from normzoo import checkpoints, models

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFEST = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())


def test_shipped_lists_the_manifest_of_the_repository():
    assert checkpoints.shipped() == MANIFEST
    assert len(MANIFEST) == 3


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: entry["name"])
def test_a_shipped_checkpoint_builds_by_name_with_every_variable_verified(entry):
    model = normzoo.build(entry["model"], weights=entry["name"])

    reference = models.build(entry["model"], norm=entry["norm"], num_classes=10, input_shape=model.input_shape[1:])
    reference.load_weights(ROOT / "checkpoints" / entry["file"])  # Keras' own reader
    assert [v.path for v in model.weights] == [v.path for v in reference.weights]
    for variable, expected in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(variable.numpy(), expected.numpy(), err_msg=variable.path)
    report = model.restore_report
    assert report.verified and "manifest.json records" in report.verification
    assert pathlib.Path(report.source).name == entry["file"]


def test_a_file_of_that_name_wins_over_the_shipped_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models.build("resnet20", norm="layer", num_classes=10).save_weights("own.weights.h5")
    pathlib.Path("resnet20_batch_digits").write_bytes(pathlib.Path("own.weights.h5").read_bytes())
    model = normzoo.build("resnet20", weights="resnet20_batch_digits")
    assert model.restore_report.source == "resnet20_batch_digits"
    assert normzoo.naming.norm_of([layer.name for layer in model.layers]) == "layer"


def test_an_unknown_name_lists_the_shipped_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="normzoo ships resnet20_batch_digits, resnet20_layer_digits"):
        normzoo.build("resnet20", weights="resnet20_group_digits")
    with pytest.raises(checkpoints.RestoreError, match="or name a checkpoint shipped with normzoo: resnet20_"):
        checkpoints.restore(models.build("resnet20"), "resnet20_group_digits")
