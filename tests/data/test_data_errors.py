"""Datasets that cannot be loaded fail at once, with the fix in the message."""

import time

import pytest
import tensorflow_datasets as tfds

import normzoo.data
from normzoo.data import Digits

# Generous: the failure this guards against is minutes of network retries.
_SECONDS = 30


@pytest.fixture
def no_download(monkeypatch):
    """Fails the test if anything asks TFDS to download and prepare a dataset."""

    def download_and_prepare(self, *args, **kwargs):
        raise AssertionError(f"normzoo tried to download and prepare {self.name}")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet2012"])
def test_unprepared_dataset_fails_in_seconds_naming_data_dir(tmp_path, no_download, name):
    start = time.monotonic()
    with pytest.raises(normzoo.data.DatasetNotPreparedError) as error:
        normzoo.data.load(name, "train", data_dir=tmp_path, global_batch_size=8, training=True)
    assert time.monotonic() - start < _SECONDS
    message = str(error.value)
    assert f"--data_dir={tmp_path}" in message
    assert f"tfds build {name} --data_dir={tmp_path}" in message
    assert isinstance(error.value, FileNotFoundError)


def test_unprepared_imagenet_explains_its_manual_download(tmp_path, no_download):
    with pytest.raises(normzoo.data.DatasetNotPreparedError, match="ILSVRC2012_img_train.tar"):
        normzoo.data.prepared_builder("imagenet2012", data_dir=tmp_path)


def test_default_data_dir_is_named_when_none_is_given(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(normzoo.data.DatasetNotPreparedError) as error:
        normzoo.data.prepared_builder("cifar10")
    message = str(error.value)
    assert "the TFDS default data directory" in message and "--data_dir=DIR" in message


def test_unknown_dataset_name_fails_naming_the_flag(tmp_path, no_download):
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar_ten' \(--dataset\)"):
        normzoo.data.load(
            "cifar_ten", "train", data_dir=tmp_path, global_batch_size=8, training=True
        )
    assert time.monotonic() - start < _SECONDS


def test_dataset_without_image_and_label_is_rejected(tmp_path, no_download):
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        normzoo.data.prepared_builder("imdb_reviews", data_dir=tmp_path)


def test_digits_prepared_meanwhile_by_another_worker_is_used(tmp_path, monkeypatch):
    # Two workers of one job prepare the same data_dir: the other one finishes
    # while this one is still generating, so this one's final rename fails.
    generate = Digits._split_generators

    def other_worker_finishes_first(self, dl_manager):
        monkeypatch.setattr(Digits, "_split_generators", generate)
        tfds.builder("digits", data_dir=tmp_path).download_and_prepare()
        return generate(self, dl_manager)

    monkeypatch.setattr(Digits, "_split_generators", other_worker_finishes_first)
    builder = normzoo.data.prepared_builder("digits", data_dir=tmp_path)
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 1437
