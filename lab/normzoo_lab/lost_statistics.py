"""Article 002's bug, reproduced for experiments: a pretrained ResNet
restored from its trainable variables only.

The library restores every variable, BatchNorm moving statistics included,
and refuses a checkpoint that lacks any (`normzoo.checkpoints.restore`).
To study what the bug does, the lab writes the state the buggy restore
leaves: the checkpoint's trainable variables, and every non-trainable one
(the moving mean and variance) at the value a freshly built model starts
with (mean 0, variance 1). Fine-tuning from that file with the library is
fine-tuning after the trainable-only restore.
"""

import keras

import normzoo


def without_statistics(path, output, *, model, norm=None, input_shape=None):
    """Writes to `output` (a `.weights.h5` path) the checkpoint at `path` as
    a restore of its trainable variables only leaves it: trainable variables
    from `path`, non-trainable ones (BatchNorm moving statistics) at their
    initial values. `model`, `norm` and `input_shape` as for
    `normzoo.build`. Returns the restored-then-reset model.

    The model is built twice: once restored (`normzoo.build(model,
    weights=path)`), once fresh with the same arguments; the fresh model's
    non-trainable variables replace the restored ones (matched by path)."""
    restored = normzoo.build(model, weights=path, norm=norm, input_shape=input_shape)
    fresh = normzoo.models.build(
        model,
        norm=norm or normzoo.naming.norm_of([layer.name for layer in restored.layers]),
        num_classes=restored.output_shape[-1],
        input_shape=restored.input_shape[1:],
    )
    initial = {variable.path: variable for variable in fresh.non_trainable_weights}
    for variable in restored.non_trainable_weights:
        variable.assign(keras.ops.copy(initial[variable.path]))
    normzoo.checkpoints.save_weights(restored, output)
    return restored
