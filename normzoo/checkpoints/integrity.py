"""What a weight file's bytes are checked against before anything is restored.

HDF5, as Keras writes `.weights.h5` files, checksums none of its data: a
flipped bit inside a tensor reads back as a slightly different weight and
restores without an error. Three checks close that gap where they can:

- Tensor checksums. `normzoo.checkpoints.save_weights` writes the file
  Keras' `model.save_weights` writes and adds HDF5 attributes that Keras'
  reader never looks at: on every dataset, `normzoo_sha256`, the sha256 of
  its values' bytes in C order as stored (`tensor_checksum`), and
  `normzoo_variable`, the path of the variable it holds; on the file,
  `normzoo_checksums = "sha256"`, which says that every dataset has one.
  `normzoo.checkpoints.restore` recomputes each as it reads the tensor.
- keras.applications' files as distributed: a file with the name under
  which Keras distributes ResNet weights
  (`resnet50_weights_tf_dim_ordering_tf_kernels.h5`, `..._notop.h5`,
  resnet101/152, their v2 and resnext) must have the md5 that Keras
  publishes for it, the hash `keras.applications.ResNet50(weights=
  "imagenet")` checks when it downloads the file.
- Published checkpoints: a file listed in a `manifest.json` in its own
  directory (a JSON list of entries with "file" and "sha256", as
  `scripts/publish_checkpoint.py` writes for normzoo's `checkpoints/`)
  must have the sha256 recorded there.
"""

import hashlib
import json
import os

import numpy as np

from normzoo import _keras_internals
from normzoo.checkpoints.report import RestoreError

FILE_ATTRIBUTE = "normzoo_checksums"
CHECKSUM_ATTRIBUTE = "normzoo_sha256"
VARIABLE_ATTRIBUTE = "normzoo_variable"
ALGORITHM = "sha256"

MANIFEST = "manifest.json"


def tensor_checksum(value):
    """The sha256 (hex) of `value`'s bytes in C order, in its dtype as stored."""
    return hashlib.sha256(np.ascontiguousarray(value).reshape(-1).view(np.uint8)).hexdigest()


def file_digest(path, algorithm="sha256"):
    """The hex digest of the file at `path` (`algorithm` is a hashlib name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def keras_applications_file(weights_name, *, top=True):
    """The name under which keras.applications distributes the ImageNet
    weights `weights_name` (e.g. "resnet50", "resnet50v2"), with the
    classifier (`top`) or without."""
    return f"{weights_name}_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5"


def _distributed_files():
    """{file name: (md5, URL)} of the keras.applications ResNet weight files.

    Keras keeps their hashes nowhere public: this is the table that
    keras.applications' ResNet, ResNetV2 and ResNeXt builders check their
    downloads against, and the address they download from
    (`normzoo._keras_internals.resnet_weights_hashes`).
    """
    base_url, hashes = _keras_internals.resnet_weights_hashes()
    files = {}
    for weights_name, (top_md5, notop_md5) in hashes.items():
        for top, md5 in ((True, top_md5), (False, notop_md5)):
            name = keras_applications_file(weights_name, top=top)
            files[name] = (md5, f"{base_url}{name}")
    return files


DISTRIBUTED_FILES = _distributed_files()


def check_file(path):
    """Checks the whole file at `path` against the hash it must have, if any.

    Returns:
        A sentence saying what the file matched (its name is that of a
        keras.applications file, or a manifest next to it lists it), or None
        when nothing says what the file's hash must be.

    Raises:
        RestoreError: The file's hash is not the one it must have.
    """
    name = os.path.basename(path)
    if name in DISTRIBUTED_FILES:
        expected, url = DISTRIBUTED_FILES[name]
        actual = file_digest(path, "md5")
        if actual != expected:
            raise RestoreError(
                f"{path} has the name of a keras.applications weights file, but its md5 is "
                f"{actual}, not the {expected} Keras publishes for {name}: it is damaged, "
                f"incomplete or another file; nothing was restored.\n"
                f"Fix: download it again from {url} (keras.applications checks the same "
                f"hash when it downloads it); if it is another file, give it another name."
            )
        return f"the file's md5 is the one Keras publishes for {name}"
    entry = manifest_entry(path)
    if entry is not None:
        manifest = os.path.join(os.path.dirname(path), MANIFEST)
        actual = file_digest(path)
        if actual != entry["sha256"]:
            raise RestoreError(
                f"{path} is listed in {manifest} with sha256 {entry['sha256']}, but its "
                f"sha256 is {actual}: the file was damaged or changed after it was "
                f"published; nothing was restored.\n"
                f"Fix: restore the published file (e.g. git checkout -- {path}); if you "
                f"trained a new one, publish it with scripts/publish_checkpoint.py, which "
                f"records its sha256."
            )
        return f"the file's sha256 is the one {manifest} records"
    return None


def manifest_entry(path):
    """The entry for `path` in the manifest of its directory, or None when
    there is no such manifest (a manifest.json that is not a list of
    entries with "file" and "sha256" belongs to something else)."""
    manifest = os.path.join(os.path.dirname(os.path.abspath(path)), MANIFEST)
    try:
        with open(manifest) as file:
            entries = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(entries, list):
        return None
    name = os.path.basename(path)
    for entry in entries:
        if isinstance(entry, dict) and entry.get("file") == name and "sha256" in entry:
            return entry
    return None
