"""With norm="skipinit" at initialization every residual block is exactly
the identity (De & Smith, 2020): its branch contributes exact zeros, so the
block computes its shortcut, which is its input wherever the shape is kept."""

import keras
import numpy as np

# Residual blocks whose shortcut is the identity (no projection, no
# subsampling) in each tiny family; see conftest.TINY_FAMILIES.
_IDENTITY_BLOCKS = {
    "imagenet_v1_basic": 5,  # resnet18: all but the first unit of conv3..conv5
    "imagenet_v1_bottleneck": 12,  # resnet50: all but each stage's first unit
    "imagenet_resnet_d": 12,  # resnet50d: the same units as resnet50
    "imagenet_v2": 9,  # keras ResNet50V2: also minus the last unit of conv2..conv4
    "cifar": 7,  # resnet20: all but the first unit of the two strided stages
    "wide": 4,  # wrn_16_1: both units of stage 1, the second of stages 2 and 3
}


def test_every_residual_block_is_the_identity_at_initialization(family, build_tiny, random_batch):
    model = build_tiny(family, "skipinit")
    layer_names = [layer.name for layer in model.layers]
    blocks, tensors = [], []
    for add in model.layers:
        if not isinstance(add, keras.layers.Add):
            continue
        block = add.name[: -len("_add")]
        skip, branch = add.input
        post_activation = f"{block}_out" in layer_names
        output = model.get_layer(f"{block}_out").output if post_activation else add.output
        identity = not any(name.startswith(f"{block}_0_") for name in layer_names)
        blocks.append((block, post_activation, identity))
        tensors += [skip, branch, output]
    probe = keras.Model(model.input, tensors)
    images, _ = random_batch(model)
    values = [v.numpy() for v in probe(images, training=True)]

    assert sum(identity for _, _, identity in blocks) == _IDENTITY_BLOCKS[family]
    for (block, post_activation, identity), (skip, branch, output) in zip(
        blocks, zip(values[0::3], values[1::3], values[2::3])
    ):
        assert not np.any(branch), block
        # A v1 block ends with a ReLU: on an identity block's input, the
        # output of the previous block's ReLU, it changes nothing.
        np.testing.assert_array_equal(
            output, np.maximum(skip, 0) if post_activation else skip, block
        )
        if identity:
            np.testing.assert_array_equal(output, skip, block)
