"""The private Keras APIs normzoo uses, each in one small function.

Keras 3 has no public API for these; each function names the internal it
wraps and the version it was checked against (Keras 3.15.1), and nothing
else in normzoo touches Keras' internals (tests/test_architecture.py holds
the code to that). When Keras changes one, this file is the one to fix.
"""

from keras.src.applications import resnet as keras_applications_resnet
from keras.src.models.functional import Functional


def is_functional(layer):
    """Whether `layer` is a Functional model (`keras.Model(inputs,
    outputs)`); Keras exports no public name for the class (Keras 3.15.1:
    `keras.src.models.functional.Functional`)."""
    return isinstance(layer, Functional)


def inbound_nodes(layer):
    """The nodes of `layer`'s calls in its model's graph; a node's
    `input_tensors` and `output_tensors` are the call's. Keras keeps them
    in a private list with no public accessor (Keras 3.15.1:
    `Operation._inbound_nodes`)."""
    return layer._inbound_nodes


def outbound_nodes(layer):
    """The nodes of the layer calls that take one of `layer`'s outputs
    (Keras 3.15.1: `Operation._outbound_nodes`)."""
    return layer._outbound_nodes


def resnet_weights_hashes():
    """`(base URL, {weights name: (md5 with the classifier, md5 without)})`
    of the ImageNet weight files that keras.applications' ResNet, ResNetV2
    and ResNeXt builders download and check: Keras keeps the table nowhere
    public (Keras 3.15.1: `keras.src.applications.resnet.BASE_WEIGHTS_PATH`
    and `WEIGHTS_HASHES`)."""
    return keras_applications_resnet.BASE_WEIGHTS_PATH, dict(keras_applications_resnet.WEIGHTS_HASHES)
