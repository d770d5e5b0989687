r"""The one-shot GPU check: normzoo's numerics and speed under Keras' JAX or
PyTorch backend on one GPU, written as one JSON (`normzoo_lab.gpu_check`).

For a machine with JAX or PyTorch (CUDA) and no TensorFlow: nothing here
imports TensorFlow, on either road. Run it once per backend, from the
repository root:

    KERAS_BACKEND=jax PYTHONPATH=. python lab/gpu_check.py \
        --output=lab/results/gpu_check_jax.json      # a few minutes on one GPU
    KERAS_BACKEND=torch PYTHONPATH=. python lab/gpu_check.py \
        --output=lab/results/gpu_check_torch.json    # a few minutes on one GPU
    KERAS_BACKEND=torch PYTHONPATH=. python lab/gpu_check.py --tiny --output=/tmp/check.json

Any other backend (or none) ends with one line naming both. Under PyTorch
`--torch_compile` adds the batch-norm WRN-16-4 training step under
`torch.compile`, as Keras' jit_compile=True compiles it (where it fails,
the JSON holds the error instead). It is off by default and outside the
5-minute budget: at tiny size on a CPU it gave the eager step's losses but
compiled for 126 s and ran 50 times slower than eager (dynamo hits its
recompile limit inside Keras' layer code).

It needs normzoo (this checkout, on PYTHONPATH), Keras 3 and Keras' small
pure-Python dependencies. The GPU machine (lab/README.md, "The GPU check")
has Python 3.12, JAX 0.11.2 and PyTorch 2.11 (CUDA), numpy, h5py,
ml-dtypes, absl-py, rich, packaging and typing-extensions, but no Keras:
carry keras 3.15.1, namex 0.1.0 and optree 0.20.0 as wheels. Here, once,
from the repository root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0

and there, one run per backend carrying `.whl` (the JSON comes back from $OUT):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit; \
        KERAS_BACKEND=torch python3 lab/gpu_check.py --output=$OUT/gpu_check_torch.json

No GPU was lent to the session of 2026-12-06 that added the PyTorch road:
no GPU JSON is committed yet (torch or jax), and the full run's "few
minutes" is an estimate. `--tiny` took about 45-65 s under JAX and 10-15 s
under PyTorch on that session's 2 shared CPU cores.

The JSON names its `backend`, `framework_version`, `compilation` (jax.jit
or eager), `devices` (jax.devices(), or the CUDA device names, or
["cpu"]) and `tensor_device` (where Keras put a tensor); then each
numerical check (layer, input, precision policy, error relative to the
NumPy float64 value, its tolerance, passed); BatchNorm / keras
BatchNormalization training step time in benchmark P2's conv net;
WRN-16-4 training images/s at batch 128 on 32x32 synthetic images per
norm; ResNet-50 inference at batch 64 with and without `bn.fold`; the
seconds of each part. The exit status is 1 when a numerical check failed.
"""

import json
import os
import sys

from absl import app, flags

_TINY = flags.DEFINE_boolean("tiny", False, "Tiny sizes (a minute or less on a CPU): the figures mean nothing.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON.", required=True)
_TORCH_COMPILE = flags.DEFINE_boolean(
    "torch_compile", False,
    "Under KERAS_BACKEND=torch, also time the batch-norm training step under torch.compile "
    "(optional: its error is recorded where it fails).")

# Before Keras is imported (normzoo imports it): Keras reads KERAS_BACKEND
# then, and without it would start TensorFlow, which the GPU machine lacks.
# The flags are parsed first, so that --help (which exits in the parse) is
# answered on any backend, and a flag error is reported below, as every
# script reports it (normzoo.commands.app).
if os.environ.get("KERAS_BACKEND") not in ("jax", "torch"):
    try:
        flags.FLAGS(sys.argv)
    except flags.Error:
        pass
    else:
        sys.exit(
            "The GPU check runs under Keras' JAX or PyTorch backend: set KERAS_BACKEND=jax or "
            f"KERAS_BACKEND=torch (KERAS_BACKEND is {os.environ.get('KERAS_BACKEND', '(unset)')!r})."
        )

from normzoo import backends  # noqa: E402
from normzoo.commands import app as command_app  # noqa: E402
from normzoo_lab import gpu_check  # noqa: E402


def main(argv):
    del argv
    if _TORCH_COMPILE.value and backends.BACKEND != "torch":
        raise app.UsageError("--torch_compile needs KERAS_BACKEND=torch.")
    record = gpu_check.run(gpu_check.TINY if _TINY.value else gpu_check.FULL,
                           torch_compile=_TORCH_COMPILE.value)
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as file:
        json.dump(record, file, indent=1)
    failed = [check["name"] + " (" + check["policy"] + ")" for check in record["numerics"] if not check["passed"]]
    print(f"wrote {_OUTPUT.value} ({record['backend']} {record['framework_version']} on "
          f"{record['tensor_device']}) in {record['seconds']:.0f} s; numerics: "
          f"{'all passed' if not failed else 'FAILED ' + '; '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    command_app.run(main)
