"""Article 002 as tests: a pretrained TF-slim resnet_v2_50 restored from its
trainable variables only loses its BatchNorm statistics; a full restore
keeps them, and its predictions do not depend on what else is in the batch.
"""

import numpy as np
import pytest
import tensorflow as tf

import normzoo
from normzoo import bn, checkpoints, layers, models

NETWORK = "resnet_v2_50"


def _build(slim_checkpoints):
    shape = np.load(slim_checkpoints / "images.npy").shape[1:]
    return models.build("resnet50v2", layout="slim", num_classes=1001, input_shape=shape)


def _norm_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, layers.BatchNorm)]


def test_trainable_only_restore_leaves_initial_statistics_that_audit_names(slim_checkpoints, tools):
    model = _build(slim_checkpoints)
    statistics = [variable.path for variable in model.non_trainable_weights]

    # The article's restore: the trainable variables only, asked for by name.
    path = slim_checkpoints / f"{NETWORK}.ckpt"
    report = checkpoints.restore(model, path, skip=statistics)

    assert report.complete and sorted(report.skipped) == sorted(statistics)
    # The trainable variables hold the checkpoint's tensors, read by
    # TensorFlow (the slim name of each is checked in test_slim).
    reader = tf.train.load_checkpoint(str(path))
    names = checkpoints.read(path).layers
    for layer in model.layers:
        for variable in layer.trainable_weights:
            tensor = reader.get_tensor(names[layer.name][variable.name].source_name)
            np.testing.assert_array_equal(
                variable.numpy(), np.reshape(tensor, variable.shape), err_msg=variable.path
            )
    assert sorted(report.unrestored_statistics) == sorted(statistics)
    assert "BatchNorm moving statistic(s) not restored" in str(report)
    for name in _norm_names(model):
        layer = model.get_layer(name)
        assert (layer.moving_mean.numpy() == 0).all() and (layer.moving_variance.numpy() == 1).all()
    problems = bn.audit(model)
    assert [problem.layer for problem in problems] == _norm_names(model)
    assert {problem.problem for problem in problems} == {"uninitialized"}
    # The model still "loads" and runs, and computes something else.
    inputs = np.load(slim_checkpoints / "images.npy")
    expected = np.load(slim_checkpoints / f"{NETWORK}_logits.npy")
    outputs = model(inputs, training=False).numpy()
    assert np.isfinite(outputs).all()
    assert tools.max_relative_difference(outputs, expected) > 0.1


def _near_identical_and_shuffled_batches(shape, rng):
    """Four near-identical images (one image plus 1e-3 noise: a batch of one
    class, as in the article), and a shuffled batch holding them among four
    unrelated images; returns both and where the four sit in the second."""
    base = rng.standard_normal(shape)
    similar = (base + 1e-3 * rng.standard_normal((4, *shape))).astype("float32")
    others = rng.standard_normal((4, *shape)).astype("float32")
    order = rng.permutation(8)
    mixed = np.concatenate([similar, others])[order]
    positions = [int(np.flatnonzero(order == i)[0]) for i in range(4)]
    return similar, mixed, positions


def test_full_restore_audit_is_clean_and_predictions_ignore_batch_composition(slim_checkpoints):
    model = normzoo.build(
        "resnet50v2",
        weights=slim_checkpoints / f"{NETWORK}.ckpt",
        input_shape=np.load(slim_checkpoints / "images.npy").shape[1:],
    )
    assert bn.audit(model) == []
    assert model.restore_report.unrestored_statistics == ()
    similar, mixed, positions = _near_identical_and_shuffled_batches(
        model.input_shape[1:], np.random.default_rng(3)
    )

    alone = model(similar, training=False).numpy()
    among_others = model(mixed, training=False).numpy()[positions]

    np.testing.assert_allclose(among_others, alone, rtol=0, atol=1e-5 * np.abs(alone).max())


def test_with_batch_statistics_predictions_depend_on_batch_composition(slim_checkpoints):
    # The mechanism of the article's failure, and proof that the comparison
    # above can fail: normalizing with each batch's own statistics (what
    # BatchNorm does in training, or with statistics it does not have) makes
    # a near-identical batch normalize its images towards each other.
    model = _build(slim_checkpoints)
    checkpoints.restore(model, slim_checkpoints / f"{NETWORK}.ckpt")
    similar, mixed, positions = _near_identical_and_shuffled_batches(
        model.input_shape[1:], np.random.default_rng(3)
    )

    alone = model(similar, training=True).numpy()
    among_others = model(mixed, training=True).numpy()[positions]

    assert np.abs(among_others - alone).max() > 0.1 * np.abs(alone).max()


@pytest.mark.parametrize("strict", [True, False])
def test_a_checkpoint_without_statistics_cannot_restore_silently(
    slim_checkpoints, tmp_path, strict
):
    # A checkpoint saved from the trainable variables only (the article's
    # saver): a strict restore refuses it, a lenient one names every lost
    # statistic.
    reader = tf.train.load_checkpoint(str(slim_checkpoints / f"{NETWORK}.ckpt"))
    trainable_only = {
        name: tf.Variable(reader.get_tensor(name), name=name)
        for name in reader.get_variable_to_shape_map()
        if name.startswith(NETWORK)
        and not name.endswith(("moving_mean", "moving_variance", "Momentum"))
    }
    path = str(tmp_path / "trainable_only.ckpt")
    tf.compat.v1.train.Saver(var_list=trainable_only).save(None, path, write_meta_graph=False)
    model = _build(slim_checkpoints)
    statistics = sorted(variable.path for variable in model.non_trainable_weights)

    if strict:
        with pytest.raises(checkpoints.RestoreError, match="moving_variance") as caught:
            checkpoints.restore(model, path)
        report = caught.value.report
    else:
        report = checkpoints.restore(model, path, strict=False)
    assert sorted(report.missing) == statistics
    assert sorted(report.unrestored_statistics) == statistics
