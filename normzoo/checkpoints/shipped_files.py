"""The checkpoints that ship with normzoo, restored by name.

    normzoo.build("resnet20", weights="resnet20_batch_digits")
    normzoo.checkpoints.restore(model, "resnet20_layer_digits")
    normzoo-finetune --init_checkpoint=resnet20_skipinit_digits

The repository's checkpoints/ (made by scripts/publish_checkpoint.py: the
files and a manifest.json with each file's sha256 and how it was trained)
travels in the wheel as normzoo/_shipped. Wherever a checkpoint path is
taken, the name of one of them (its manifest "name") is taken too, when no
file or directory of that name exists; reading it checks its sha256
against the manifest (`normzoo.checkpoints.integrity`).
"""

import copy
import functools
import json
import os

from normzoo.checkpoints import integrity

DIRECTORY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_shipped")


@functools.cache
def _manifest():
    """The install's manifest, read once: it never changes while normzoo runs."""
    try:
        with open(os.path.join(DIRECTORY, integrity.MANIFEST)) as file:
            return json.load(file)
    except FileNotFoundError:
        return []


def shipped():
    """The manifest entries of the shipped checkpoints, in its order: dicts
    with "name", "file", "sha256", "model", "norm", "dataset",
    "test_accuracy", the command that trained it, ... (a copy; empty when
    the install has none)."""
    return copy.deepcopy(_manifest())


def names():
    """The names of the shipped checkpoints."""
    return [entry["name"] for entry in _manifest()]


def exists(path):
    """Whether a file, a directory or a TensorFlow checkpoint prefix (its
    `.index` file) is at `path`: what wins over a shipped checkpoint's name."""
    return os.path.exists(path) or os.path.exists(f"{path}.index")


def resolve(path):
    """`path` itself, unless nothing `exists` at `path` and it is the name of
    a shipped checkpoint: then that checkpoint's file."""
    if exists(path):
        return path
    for entry in _manifest():
        if entry["name"] == path:
            return os.path.join(DIRECTORY, entry["file"])
    return path
