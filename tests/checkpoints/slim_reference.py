"""Builds TF-slim ResNets, the reference for TF1 checkpoints (run as a script).

    python slim_reference.py OUTPUT_DIR resnet_v1_50 resnet_v2_50

For each network: builds it with tf_slim in graph mode (inference mode,
TF-slim's default arg scope), gives every variable a random value (BatchNorm
moving statistics and affine terms away from their initial values), adds a
global step and Momentum slots as a training run's checkpoint has them,
saves a TF1 name-based checkpoint `OUTPUT_DIR/<network>.ckpt` with
`tf.compat.v1.train.Saver`, and writes TF-slim's logits for the images in
`OUTPUT_DIR/images.npy` to `OUTPUT_DIR/<network>_logits.npy`.

TF-slim runs in its own process: it needs graph mode and TF1 layers, while
the tests run Keras 3 eagerly.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# TF 2.21 loads tf.compat.v1.layers.BatchNormalization, which tf_slim's
# batch_norm uses, from `tf_keras.legacy_tf_layers`; tf_keras 2.21 has that
# module under `tf_keras.src` only.
import tf_keras.src.legacy_tf_layers  # noqa: E402
import tf_keras.src.legacy_tf_layers.normalization  # noqa: E402

sys.modules.setdefault("tf_keras.legacy_tf_layers", tf_keras.src.legacy_tf_layers)
sys.modules.setdefault(
    "tf_keras.legacy_tf_layers.normalization", tf_keras.src.legacy_tf_layers.normalization
)

import tf_slim as slim  # noqa: E402
from tf_slim.nets import resnet_v1, resnet_v2  # noqa: E402

# network -> (builder, arg scope, number of classes of the published checkpoint)
NETWORKS = {
    "resnet_v1_50": (resnet_v1.resnet_v1_50, resnet_v1.resnet_arg_scope, 1000),
    "resnet_v2_50": (resnet_v2.resnet_v2_50, resnet_v2.resnet_arg_scope, 1001),
}


def random_value(name, shape, rng):
    """He-normal kernels; BatchNorm statistics and affine terms of the sizes
    a trained network has, so that each of them changes the logits."""
    leaf = name.split(":")[0].rsplit("/", 1)[-1]
    if leaf == "weights":
        fan_in = int(np.prod(shape[:-1]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if leaf == "moving_variance":
        return rng.uniform(0.5, 2.0, shape)
    if leaf == "gamma":
        return rng.uniform(0.5, 1.5, shape)
    if leaf in ("moving_mean", "beta", "biases"):
        return rng.normal(0.0, 0.2, shape)
    raise ValueError(f"No random value for {name}")


def build_and_save(network, output_dir, images, seed):
    builder, arg_scope, num_classes = NETWORKS[network]
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf.compat.v1.placeholder(tf.float32, images.shape)
        with slim.arg_scope(arg_scope()):
            logits, _ = builder(inputs, num_classes=num_classes, is_training=False)
        logits = tf.squeeze(logits, [1, 2])
        model_variables = tf.compat.v1.global_variables()
        # A training run's checkpoint also holds the step and the optimizer's
        # slots, named as MomentumOptimizer names them (`<variable>/Momentum`);
        # a restore must ignore them.
        tf.compat.v1.train.get_or_create_global_step()
        for variable in tf.compat.v1.trainable_variables():
            tf.compat.v1.Variable(
                tf.zeros(variable.shape), name=f"{variable.op.name}/Momentum", trainable=False
            )
        rng = np.random.default_rng(seed)
        values = {
            variable: random_value(variable.name, variable.shape.as_list(), rng).astype(np.float32)
            for variable in model_variables
        }
        placeholders = {v: tf.compat.v1.placeholder(tf.float32, v.shape) for v in model_variables}
        assign = tf.group(*[v.assign(placeholders[v]) for v in model_variables])
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(assign, {placeholders[v]: value for v, value in values.items()})
            saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
            saver.save(session, os.path.join(output_dir, f"{network}.ckpt"), write_meta_graph=False)
            values = session.run(logits, {inputs: images})
    np.save(os.path.join(output_dir, f"{network}_logits.npy"), values)


def main(output_dir, *networks):
    tf.compat.v1.disable_eager_execution()
    images = np.load(os.path.join(output_dir, "images.npy"))
    for seed, network in enumerate(networks):
        build_and_save(network, output_dir, images, seed)


if __name__ == "__main__":
    main(*sys.argv[1:])
