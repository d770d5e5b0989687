"""TensorFlow behaviours that normzoo works around, pinned: when an upstream
release fixes one, its strict xfail passes, the test fails, and the
workaround and the README's known limitation can go.

TF 2.21's oneDNN convolution mishandles an empty batch: `Conv2D` on
(0, 8, 8, 3) returns shape (0, 8, 8, 3) (its input's, not 4 filters'), so
its bias addition fails, and its filter gradient fails with "Missing 1-th
output". With oneDNN off (`TF_ENABLE_ONEDNN_OPTS=0`) both are correct.
oneDNN is on by default on CPUs with AVX-512 and wherever
`TF_ENABLE_ONEDNN_OPTS=1` (normzoo's scripts set it). A replica handed an
empty batch (a Keras `fit` under MirroredStrategy whose last batch has
fewer examples than replicas) therefore crashes any convolutional model,
with Keras' own BatchNormalization too; normzoo's input pipelines never
hand a replica an empty batch (tests/data/test_data_pipeline.py).
"""

import json
import os
import subprocess
import sys

import pytest

# Prints the shapes of a convolution's output and of its kernel's gradient
# on an empty batch (or the error's first line), and whether oneDNN is on.
_SCRIPT = """
import json
import tensorflow as tf
from normzoo import runtime

images = tf.zeros((0, 8, 8, 3))
kernel = tf.Variable(tf.ones((3, 3, 3, 4)))
result = {"onednn": runtime.onednn_enabled()}
with tf.GradientTape() as tape:
    outputs = tf.nn.conv2d(images, kernel, 1, "SAME")
    loss = tf.reduce_sum(outputs)
result["output_shape"] = outputs.shape.as_list()
try:
    result["kernel_gradient_shape"] = tape.gradient(loss, kernel).shape.as_list()
except tf.errors.OpError as error:
    result["kernel_gradient_shape"] = str(error).splitlines()[0]
print(json.dumps(result))
"""


def _empty_batch_convolution(onednn):
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


CORRECT = {"output_shape": [0, 8, 8, 4], "kernel_gradient_shape": [3, 3, 3, 4]}


@pytest.fixture(scope="module")
def with_onednn():
    return _empty_batch_convolution("1")


def test_convolution_of_an_empty_batch_with_onednn_off_is_correct():
    result = _empty_batch_convolution("0")
    assert result == {"onednn": False, **CORRECT}


def test_tf_enable_onednn_opts_1_turns_onednn_on(with_onednn):
    # Else the xfail below would pin nothing.
    assert with_onednn["onednn"]


@pytest.mark.xfail(
    strict=True,
    reason="TF 2.21's oneDNN Conv2D returns its input's shape on an empty batch (and its "
    "filter gradient may fail: 'Missing 1-th output'); see the README's known limitations",
)
def test_tensorflow_onednn_convolution_of_an_empty_batch(with_onednn):
    shapes = {key: with_onednn[key] for key in CORRECT}
    assert shapes == CORRECT
