"""What a restore did: `RestoreReport`, and `RestoreError` when it could not."""

import dataclasses

# How many names an error message or summary lists before "and N more".
_LISTED = 8


@dataclasses.dataclass(frozen=True)
class ShapeMismatch:
    """A model variable whose checkpoint tensor has another shape."""

    variable: str
    model_shape: tuple
    source_name: str
    source_shape: tuple

    def __str__(self):
        return (
            f"{self.variable}: model {self.model_shape}, checkpoint {self.source_shape} "
            f"({self.source_name})"
        )


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """Every variable of a model, and every tensor of a checkpoint, accounted for.

    Model variables are named by their Keras path ("conv1_bn/moving_mean");
    checkpoint tensors by their name in the checkpoint file.

    Attributes:
        source: The checkpoint path that was read (for a directory of
            checkpoints, the checkpoint chosen in it).
        format: One of `normzoo.checkpoints.FORMATS`.
        restored: Model variables assigned from the checkpoint.
        missing: Model variables the checkpoint has no tensor for; they keep
            their values.
        skipped: Model variables left unrestored because `skip` named them.
        shape_mismatched: `ShapeMismatch`es; those variables keep their
            values.
        non_finite: (model variable, checkpoint tensor) pairs whose tensor
            holds NaN or Inf; those variables keep their values.
        unexpected: Checkpoint tensors that match no model variable.
        ignored: (checkpoint tensor, reason) pairs for tensors that are not
            model weights (optimizer state, step counters), or that belong to
            layers `skip` named.
        applied: False when nothing was assigned (a strict restore that
            failed).
        verified: True if the checkpoint's bytes were checked and matched:
            the sha256 of every tensor of a file written by
            `normzoo.checkpoints.save_weights`, the CRC32C of every tensor of
            a TensorFlow checkpoint, the CRC-32s of a `.keras` file, the md5
            Keras publishes for a keras.applications file under its
            distributed name, the sha256 a `manifest.json` next to the file
            records. False when nothing could check them (e.g. a
            `.weights.h5` written by Keras' own `save_weights`): the restore
            went through, but a flipped bit in a tensor would have gone
            unnoticed.
        verification: What the bytes matched, if `verified`; else why they
            were not verified.
        preprocess_mode: The input preprocessing the weights expect, a
            `preprocess_mode` of `normzoo.data.load` ("tf", "torch",
            "caffe" or "vgg"; see `normzoo.data.preprocessing.Recipe`), or
            None when neither the checkpoint nor the files next to it say.
            `scripts/finetune.py` feeds it unless --preprocess_mode says
            otherwise.
        preprocessing_origin: Why the weights expect `preprocess_mode`: the
            source's convention, or the file that records it.
    """

    source: str
    format: str
    restored: tuple = ()
    missing: tuple = ()
    skipped: tuple = ()
    shape_mismatched: tuple = ()
    non_finite: tuple = ()
    unexpected: tuple = ()
    ignored: tuple = ()
    applied: bool = True
    verified: bool = False
    verification: str = "nothing was checked"
    preprocess_mode: str | None = None
    preprocessing_origin: str = "neither the checkpoint nor the files next to it record it"

    @property
    def complete(self):
        """True if every model variable not named in `skip` was restored and
        every checkpoint tensor of the model was used."""
        return not (self.missing or self.shape_mismatched or self.non_finite or self.unexpected)

    @property
    def unrestored_statistics(self):
        """BatchNorm moving statistics that were not restored, for whatever
        reason (missing, skipped, mismatched, non-finite): the variables whose
        loss leaves a restored network predicting badly in inference mode."""
        names = [
            *self.missing,
            *self.skipped,
            *(mismatch.variable for mismatch in self.shape_mismatched),
            *(variable for variable, _ in self.non_finite),
        ]
        return tuple(name for name in names if _is_statistic(name))

    def problems(self):
        """One line per kind of problem, each listing its names; empty if
        `complete`."""
        lines = []
        if self.missing:
            lines.append(
                f"{len(self.missing)} model variable(s) missing from the checkpoint: "
                f"{listing(self.missing)}"
            )
        if self.shape_mismatched:
            lines.append(
                f"{len(self.shape_mismatched)} shape mismatch(es): "
                f"{listing(self.shape_mismatched, separator='; ')}"
            )
        if self.non_finite:
            lines.append(
                f"{len(self.non_finite)} checkpoint tensor(s) holding NaN or Inf: "
                f"{listing([f'{source} (for {variable})' for variable, source in self.non_finite])}"
            )
        if self.unexpected:
            lines.append(
                f"{len(self.unexpected)} checkpoint tensor(s) matching no model variable: "
                f"{listing(self.unexpected)}"
            )
        return lines

    def __str__(self):
        state = "restored" if self.applied else "NOT restored (nothing was changed)"
        lines = [
            f"{self.source} ({self.format}): {state}; {len(self.restored)} variable(s) "
            f"restored, {len(self.skipped)} skipped, {len(self.ignored)} checkpoint "
            f"tensor(s) ignored.",
            f"verified: {self.verification}."
            if self.verified
            else f"not verified: {self.verification}.",
            f"input preprocessing the weights expect: {self.preprocess_mode!r} "
            f"({self.preprocessing_origin})."
            if self.preprocess_mode
            else f"input preprocessing the weights expect: unknown ({self.preprocessing_origin}).",
        ]
        if self.skipped:
            lines.append(f"skipped as asked: {listing(self.skipped)}")
        lines.extend(self.problems())
        if self.unrestored_statistics:
            lines.append(
                f"{len(self.unrestored_statistics)} BatchNorm moving statistic(s) not restored: "
                f"those layers normalize with their initial statistics "
                f"({listing(self.unrestored_statistics)})."
            )
        return "\n".join(lines)


class RestoreError(ValueError):
    """A checkpoint could not be restored; the model was left unchanged.

    Attributes:
        report: The `RestoreReport` of what would have happened (None when
            the checkpoint could not even be read).
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


def _is_statistic(name):
    return name.endswith(("/moving_mean", "/moving_variance"))


def listing(items, separator=", "):
    """`items` joined by `separator`, the first few only, then "and N more"."""
    items = [str(item) for item in items]
    shown = separator.join(items[:_LISTED])
    if len(items) > _LISTED:
        shown += f"{separator}and {len(items) - _LISTED} more"
    return shown
