"""Signal propagation: variance of the skip path and of each residual branch.

De & Smith (2020, Figure 4): in a pre-activation BatchNorm ResNet at
initialization, the variance of the skip path before block i grows about
linearly in i while every (normalized) residual branch has variance about 1,
so BatchNorm downscales branch i by about 1/sqrt(i) relative to the skip
path. With SkipInit (alpha = 0) every block is the identity at
initialization and the skip path keeps the variance of its input; without
normalization it roughly doubles at every block.

Reference:
    De & Smith, "Batch Normalization Biases Residual Blocks Towards the
    Identity Function in Deep Networks", NeurIPS 2020, arXiv:2002.10444.
"""

import dataclasses

import keras
import numpy as np

from normzoo import naming


def residual_signals(model):
    """A model with `model`'s inputs that outputs, for every residual block,
    the two tensors its addition adds.

    Residual blocks are found as the `keras.layers.Add` layers named
    "<block>_add" (`normzoo.naming.add`) with two inputs, skip path first, as
    `normzoo.models.blocks.residual_block` builds them. The new model shares
    `model`'s layers and weights.

    Returns:
        (signal_model, block_names): `signal_model(x)` returns a list with
        `skip, branch` for each block, in the order of `block_names`.
    """
    block_names, outputs = [], []
    for layer in model.layers:
        block = naming.block_of_add(layer.name)
        if isinstance(layer, keras.layers.Add) and block is not None:
            skip, branch = layer.input
            block_names.append(block)
            outputs += [skip, branch]
    if not block_names:
        raise ValueError(
            f"Model {model.name!r} has no residual block: no Add layer named "
            f"{naming.add('<block>')!r}."
        )
    return keras.Model(model.input, outputs, name=f"{model.name}_signals"), block_names


@dataclasses.dataclass(frozen=True)
class SignalPropagation:
    """Per residual block, in order: `blocks` (names), `skip_variance` and
    `branch_variance` (float64 arrays). A variance is that of each channel
    over the batch and spatial positions, averaged over channels, as
    BatchNorm would measure it."""

    blocks: tuple
    skip_variance: np.ndarray
    branch_variance: np.ndarray


def _channel_variance(x):
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(np.var(x.reshape(-1, x.shape[-1]), axis=0)))


def signal_propagation(model, images, *, training=True):
    """Measures the variance of the skip path and residual branch at every
    residual block of `model` on `images`.

    Args:
        model: A model of `normzoo.models` (or any model whose residual
            blocks `residual_signals` finds).
        images: A batch of inputs.
        training: Run in training mode (the default): BatchNorm normalizes
            with the batch's statistics, as in the paper; dropout, if any, is
            active. The model's variables, moving statistics included, are
            the same after the call as before.

    Returns:
        A `SignalPropagation`.
    """
    signal_model, block_names = residual_signals(model)
    saved = [variable.numpy() for variable in model.non_trainable_variables]
    try:
        tensors = signal_model(images, training=training)
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
    variances = np.array([_channel_variance(t) for t in tensors]).reshape(-1, 2)
    return SignalPropagation(tuple(block_names), variances[:, 0], variances[:, 1])
