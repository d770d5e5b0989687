"""Every family x every normalization builds, predicts and trains.

One training step must reach exactly the variables it should (every one,
except the residual branches of a SkipInit network at alpha = 0) and lower
the loss on its batch: a step of norm <= 0.01 (clipped SGD) is first-order
small, so a loss that does not fall means a wrong gradient.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _is_in_residual_branch(variable_path):
    # Layers of a branch are named conv{s}_block{u}_{j}_... with j >= 1 (j = 0
    # is the shortcut), see normzoo.models.blocks.
    layer = variable_path.split("/")[0]
    parts = layer.split("_")
    return (
        len(parts) > 2 and parts[1].startswith("block") and parts[2].isdigit() and parts[2] != "0"
    )


# ImageNet v1 (basic blocks) and v2 (bottlenecks), CIFAR and Wide-ResNets;
# v1 bottlenecks are compared with keras.applications in test_layouts.
@pytest.mark.parametrize("family", ["imagenet_v1_basic", "imagenet_v2", "cifar", "wide"])
def test_builds_predicts_and_trains_one_step(family, norm, build_tiny, random_batch):
    model = build_tiny(family, norm)
    images, labels = random_batch(model, batch_size=8)

    logits = model(images, training=False).numpy()
    assert logits.shape == (len(images), model.output_shape[-1])
    assert np.all(np.isfinite(logits))
    # Inference never mixes samples: the first image alone gives its logits.
    np.testing.assert_allclose(
        model(images[:1], training=False).numpy(), logits[:1], rtol=1e-4, atol=1e-5
    )

    with tf.GradientTape() as tape:
        loss = _LOSS(labels, model(images, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)

    no_gradient = sorted(
        v.path
        for v, g in zip(model.trainable_variables, gradients)
        if g is None or not np.any(g.numpy())
    )
    # SkipInit's scalars start at 0, which cuts every residual branch off the
    # loss: exactly their variables get no gradient. Anything else means a
    # variable the loss does not reach.
    expected = sorted(v.path for v in model.trainable_variables if _is_in_residual_branch(v.path))
    assert no_gradient == (expected if norm == "skipinit" else [])
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients if g is not None)

    keras.optimizers.SGD(learning_rate=0.01, global_clipnorm=1.0).apply(
        gradients, model.trainable_variables
    )
    new_loss = _LOSS(labels, model(images, training=True))
    assert float(new_loss) < float(loss)
