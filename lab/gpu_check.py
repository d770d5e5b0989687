r"""The one-shot GPU check: normzoo's numerics and speed under Keras' JAX
backend on one GPU, written as one JSON (`normzoo_lab.gpu_check`).

For a machine with JAX (CUDA) and no TensorFlow. It needs normzoo (this
checkout, on PYTHONPATH), Keras 3 and Keras' small pure-Python
dependencies; numpy, h5py, ml-dtypes, absl-py and rich must be there.

    KERAS_BACKEND=jax PYTHONPATH=. python lab/gpu_check.py \
        --output=lab/results/gpu_check.json       # about 5 minutes on one GPU
    KERAS_BACKEND=jax PYTHONPATH=. python lab/gpu_check.py --tiny --output=/tmp/check.json

The JSON holds the machine and JAX devices; each numerical check (layer,
input, precision policy, error relative to the NumPy float64 value, its
tolerance, passed); BatchNorm / keras BatchNormalization training step
time in benchmark P2's conv net under jax.jit; WRN-16-4 training images/s
at batch 128 on 32x32 synthetic images per norm; ResNet-50 inference at
batch 64 with and without `bn.fold`. The exit status is 1 when a
numerical check failed.
"""

import json
import os
import sys

from absl import flags

from normzoo.commands import app as command_app

_TINY = flags.DEFINE_boolean("tiny", False, "Tiny sizes (seconds on a CPU): the figures mean nothing.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON.", required=True)


def main(argv):
    del argv
    if os.environ.get("KERAS_BACKEND") != "jax":
        sys.exit("The GPU check runs under Keras' JAX backend: set KERAS_BACKEND=jax.")
    from normzoo_lab import gpu_check  # noqa: PLC0415 (after the backend check: Keras reads it on import)

    record = gpu_check.run(gpu_check.TINY if _TINY.value else gpu_check.FULL)
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as file:
        json.dump(record, file, indent=1)
    failed = [check["name"] + " (" + check["policy"] + ")" for check in record["numerics"] if not check["passed"]]
    print(f"wrote {_OUTPUT.value} in {record['seconds']:.0f} s; numerics: "
          f"{'all passed' if not failed else 'FAILED ' + '; '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    command_app.run(main)
