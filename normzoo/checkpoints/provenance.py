"""What the files next to a normzoo checkpoint record about its training:
the input preprocessing its weights expect.

normzoo's training loop writes `flags.json` into its `model_dir`, next to
`model.weights.h5` and the `checkpoints/` directory; its `config` holds the
`preprocess_mode` the run fed (runs made before that field existed fed
"tf", the only mode the loop had). `scripts/publish_checkpoint.py` copies
that value into the entry of `checkpoints/manifest.json`.
"""

import json
import os

from normzoo.checkpoints import integrity

FLAGS_FILE = "flags.json"
# What normzoo's training loop fed before flags.json recorded preprocess_mode.
UNRECORDED_TRAINING_MODE = "tf"


def recorded_preprocessing(path):
    """(preprocess_mode, where it is recorded) for the checkpoint at `path`
    (a file, or a TensorFlow checkpoint prefix), or None when neither a
    manifest entry nor a training run's flags.json next to it says.

    Looked up in order: the entry of `path` in the `manifest.json` of its
    directory (normzoo's published checkpoints); the `flags.json` of the
    run whose `model_dir` holds it (`model_dir/model.weights.h5`, or a
    checkpoint in `model_dir/checkpoints/`).
    """
    entry = integrity.manifest_entry(path)
    if entry is not None and "preprocess_mode" in entry:
        manifest = os.path.join(os.path.dirname(os.path.abspath(path)), integrity.MANIFEST)
        return entry["preprocess_mode"], f"recorded in {manifest}"
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.basename(directory) == "checkpoints":
        directory = os.path.dirname(directory)
    flags_path = os.path.join(directory, FLAGS_FILE)
    try:
        with open(flags_path) as file:
            config = json.load(file)["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(config, dict):
        return None
    mode = config.get("preprocess_mode")
    if mode is None:
        return (
            UNRECORDED_TRAINING_MODE,
            f"the training run's {flags_path} predates preprocess_mode, and normzoo's "
            f"training loop fed '{UNRECORDED_TRAINING_MODE}' then",
        )
    return mode, f"recorded in the training run's {flags_path}"
