"""Runs one measurement in a fresh Python process, for what must be decided
before TensorFlow starts: logical devices (P4), TF_ENABLE_ONEDNN_OPTS
(the oneDNN comparison), a Keras backend.

    result = subprocess_run.call(p4_synchronized_bn.measure_in_process, settings)

The child imports the same normzoo as the parent, calls the function with
the run's `Settings` and hands back its JSON-serializable result.
"""

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile

# The folder that holds the normzoo package this module belongs to.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def call(function, settings, environment=None):
    """`function(settings)` in a new Python process whose environment is
    this one's plus `environment`; returns its result.

    Args:
        function: a module-level function of `settings` returning a
            JSON-serializable value.
        settings: a `Settings` (any dataclass with a `from_dict`
            classmethod that reads back `dataclasses.asdict`).
        environment: {name: value} to set in the child's environment.

    Raises:
        RuntimeError: the child failed; the message ends with its stderr.
    """
    # The child must import the normzoo this process runs, whatever the
    # installed one is.
    python_path = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as directory:
        settings_path = os.path.join(directory, "settings.json")
        output_path = os.path.join(directory, "result.json")
        with open(settings_path, "w") as file:
            json.dump(dataclasses.asdict(settings), file)
        command = [
            sys.executable, "-c", _CHILD,
            function.__module__, function.__name__,
            type(settings).__module__, type(settings).__qualname__, settings_path,
            output_path,
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": python_path, **(environment or {})}
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(
                f"{function.__module__}.{function.__name__} failed in its subprocess:\n{completed.stderr[-4000:]}"
            )
        with open(output_path) as file:
            return json.load(file)


_CHILD = f"import sys; import {__name__} as child; child.run_child(*sys.argv[1:])"


def run_child(module_name, function_name, settings_module, settings_class, settings_path, output_path):
    """The child's side of `call`."""
    with open(settings_path) as file:
        values = json.load(file)
    settings = getattr(importlib.import_module(settings_module), settings_class).from_dict(values)
    result = getattr(importlib.import_module(module_name), function_name)(settings)
    with open(output_path, "w") as file:
        json.dump(result, file)
