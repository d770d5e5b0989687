"""One model per family: an XLA-compiled training step (`jit_compile=True`)
computes what the same step computes eagerly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from normzoo import models
from normzoo.models import cifar_resnet

# The smallest member of each family, narrowed and on small images: tracing
# and XLA's compile time on CPU grow with the number of layers. The CIFAR
# family's builder also makes ResNet-8 (6n + 2 with n = 1).
_BUILDERS = {
    "resnet18": lambda: models.build("resnet18", num_classes=5, width=8, input_shape=(32, 32, 3)),
    "resnet8": lambda: cifar_resnet.cifar_resnet(
        8, num_classes=5, width=4, input_shape=(16, 16, 3)
    ),
    "wrn_10_1": lambda: models.build("wrn_10_1", num_classes=5, input_shape=(16, 16, 3)),
}
_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _training_step(model):
    optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)

    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = _LOSS(labels, model(images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    return step


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_jit_compiled_training_step_equals_the_eager_one(name, random_batch):
    eager = _BUILDERS[name]()
    jitted = _BUILDERS[name]()
    initial_values = [variable.numpy() for variable in eager.variables]
    for variable, value in zip(jitted.variables, initial_values):
        variable.assign(value)
    images, labels = random_batch(eager, batch_size=8)

    eager_loss = _training_step(eager)(images, labels)
    jitted_loss = tf.function(_training_step(jitted), jit_compile=True)(images, labels)

    # Float32 rounding alone: in eager mode the logits of such a network
    # are ~1e-4 (relative) away from the same network in float64 (BatchNorm
    # over few values in the last stage amplifies it), and XLA reorders the
    # float32 reductions. A wrong compiled step (a missed statistics update,
    # a different gradient) is off by 1e-2 or more.
    np.testing.assert_allclose(jitted_loss.numpy(), eager_loss.numpy(), rtol=2e-4)
    for variable, expected in zip(jitted.variables, eager.variables):
        np.testing.assert_allclose(
            variable.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5, err_msg=variable.path
        )
    # The step did move every kernel, gamma, beta and moving statistic (the
    # biases of keras' convolutions before a BatchNorm get no gradient).
    for variable, initial in zip(eager.variables, initial_values):
        if variable.name != "bias":
            assert not np.allclose(variable.numpy(), initial), variable.path
