"""The settings of a benchmark run: sizes, rounds, modes, which figures.

`Settings` is the one list of them. lab/benchmark.py defines one flag
per field (`normzoo_lab.benchmarks.cli`), benchmark.json records them under
"config", a figure measured in a subprocess receives them, and `--quick`
takes each field's `quick` value.
"""

import dataclasses

from normzoo import models
from normzoo_lab import benchmarking
from normzoo_lab.benchmarks import p2_batch_norm, p13_batch_norm_bandwidth
from normzoo_lab.benchmarks.figures import FIGURES

SELECTABLE = tuple(sorted(figure.id for figure in FIGURES if figure.selected is None))

_NOT_QUICK = object()


def _setting(default, help_text, *, quick=_NOT_QUICK, used_by=()):
    """A field of `Settings`: its default, its --help text, its value under
    --quick (if it has one) and the figures that read it."""
    return dataclasses.field(
        default=default, metadata={"help": help_text, "quick": quick, "used_by": used_by}
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a benchmark run is told; see each field's help (the
    --help of lab/benchmark.py). List settings are tuples of strings,
    as the flags give them."""

    quick: bool = _setting(False, "Tiny sizes and few steps (for tests): the figures are not meaningful.")
    figures: tuple = _setting(SELECTABLE, "Figures to measure.")
    rounds: int = _setting(5, "Alternating timing rounds (P1, P3, P4).", quick=1,
                           used_by=("P1", "P3", "P4", "P6", "oneDNN"))
    warmup_steps: int = _setting(1, "Untimed steps after the first call, before timing.", quick=0,
                                 used_by=("P1", "P2", "P3", "P4", "P6", "P7", "P8", "P13", "oneDNN"))
    steps_per_round: int = _setting(2, "Steps timed per round (P1, P3, P4, P7).", quick=1,
                                    used_by=("P1", "P3", "P6", "P7", "oneDNN"))
    resnet_batch_size: int = _setting(8, "Batch of the ResNet-50 figures (P1, P3, P6).", quick=2,
                                      used_by=("P1", "P3", "P5", "P6", "oneDNN"))
    # At 32x32 the last stage is 1x1: two images give BatchNorm variances
    # near 0 and folding then divides by them.
    resnet_image_size: int = _setting(128, "Image size of the ResNet-50 figures (P1, P3, P6).", quick=64,
                                      used_by=("P1", "P3", "P5", "P6", "oneDNN"))
    resnet_modes: tuple = _setting(("graph", "xla"), "Modes of P1 and P3: eager, graph (tf.function), xla.",
                                   quick=("eager",), used_by=("P1", "P3", "P6"))
    layers_batch_size: int = _setting(32, "Batch of the conv net of P2 and P10.", quick=4, used_by=("P2", "P10"))
    layers_image_size: int = _setting(32, "Image size of the conv net of P2 and P10.", quick=8, used_by=("P2", "P10"))
    layers_modes: tuple = _setting(("eager", "graph", "xla"), "Modes of P2.", quick=("graph",), used_by=("P2",))
    layers_rounds: int = _setting(11, "Alternating timing rounds of P2 and P10.", quick=1, used_by=("P2", "P10"))
    layers_steps_per_round: int = _setting(10, "Steps timed per round in P2 and P10.", quick=2, used_by=("P2", "P10"))
    layers_cases: tuple = _setting(
        tuple(p2_batch_norm.CASES),
        "Models of P2, each with normzoo's and Keras' batch normalization: "
        + "; ".join(f"{name}: {case.description}" for name, case in p2_batch_norm.CASES.items()) + ".",
        used_by=("P2",),
    )
    sequence_batch_size: int = _setting(32, "Batch of P2's masked sequence model.", quick=4, used_by=("P2",))
    sequence_length: int = _setting(32, "Padded length of P2's sequences.", quick=6, used_by=("P2",))
    sync_bn_model: str = _setting("resnet20", "Model of P4.", quick="wrn_10_1", used_by=("P4",))
    sync_bn_batch_size: int = _setting(64, "Global batch of P4 (split over 2 replicas).", quick=4, used_by=("P4",))
    sync_bn_image_size: int = _setting(32, "Image size of P4.", quick=8, used_by=("P4",))
    sync_bn_steps_per_round: int = _setting(5, "Steps timed per round in P4.", quick=1, used_by=("P4",))
    replica_model: str = _setting("resnet20", "Model of P8.", quick="wrn_10_1", used_by=("P8",))
    replica_batch_size: int = _setting(64, "Global batch of P8 (split over 2 replicas).", quick=4,
                                       used_by=("P8",))
    replica_image_size: int = _setting(32, "Image size of P8.", quick=8, used_by=("P8",))
    replica_rounds: int = _setting(41, "Alternating timing rounds of P8.", quick=1, used_by=("P8",))
    replica_steps_per_round: int = _setting(3, "Steps timed per round in P8.", quick=1, used_by=("P8",))
    build_model: str = _setting("wrn_1000_2", "Model whose build time P5 measures.", quick="wrn_16_2",
                                used_by=("P5",))
    wrn_depths: tuple = _setting(("16", "40", "100", "400"),
                                 "Depths n of the WRN-n-2 of P7 (1000 is valid too).",
                                 quick=("10", "16"), used_by=("P7",))
    wrn_batch_size: int = _setting(8, "Batch of P7.", quick=2, used_by=("P7",))
    wrn_image_size: int = _setting(16, "Image size of P7 (and of P5's build).", quick=8, used_by=("P5", "P7"))
    wrn_rounds: int = _setting(3, "Timing rounds per depth in P7.", quick=1, used_by=("P7",))
    matmul_size: int = _setting(1024, "Size of the square matrices of P6's peak measurement.", quick=256,
                                used_by=("P6", "P7"))
    main_job_model: str = _setting("resnet20", "Model of P9's training runs (scripts/train.py's default) and of P11.",
                                   quick="wrn_10_1", used_by=("P9", "P11"))
    main_job_image_size: int = _setting(32, "Image size of P9's runs and P11 (0: the dataset's own).", quick=0,
                                        used_by=("P9", "P11"))
    main_job_batch_size: int = _setting(64, "Global batch of P9's runs and P11.", quick=16, used_by=("P9", "P11"))
    main_job_epochs: int = _setting(10, "Epochs of P9's runs.", quick=2, used_by=("P9",))
    main_job_steps_per_epoch: int = _setting(0, "Steps per epoch of P9's runs (0: the split over the batch).",
                                             quick=2, used_by=("P9",))
    main_job_rounds: int = _setting(3, "Runs of P9 per variant (normzoo, model.fit, mirrored).", quick=1,
                                    used_by=("P9",))
    determinism_rounds: int = _setting(21, "Alternating timing rounds of P11.", quick=1, used_by=("P11",))
    determinism_steps_per_round: int = _setting(5, "Steps timed per round in P11.", quick=1, used_by=("P11",))
    fashion_model: str = _setting("resnet20", "Model of P12's epoch on Fashion-MNIST.", quick="wrn_10_1",
                                  used_by=("P12",))
    fashion_batch_size: int = _setting(128, "Batch of P12 (the Fashion-MNIST checkpoints' recipe).", quick=16,
                                       used_by=("P12",))
    fashion_steps_per_epoch: int = _setting(0, "Steps of P12's epoch (0: the training split over the batch).",
                                            quick=2, used_by=("P12",))
    fashion_rounds: int = _setting(2, "Alternating runs of P12 per side (normzoo, model.fit).", quick=1,
                                   used_by=("P12",))
    bandwidth_batch_size: int = _setting(32, "Batch of P13's tensor (a ResNet-50 stage: 32 x 56 x 56 x 64).",
                                         quick=2, used_by=("P13",))
    bandwidth_image_size: int = _setting(56, "Height and width of P13's tensor.", quick=8, used_by=("P13",))
    bandwidth_channels: int = _setting(64, "Channels of P13's tensor.", quick=8, used_by=("P13",))
    bandwidth_modes: tuple = _setting(
        tuple(p13_batch_norm_bandwidth.MODES),
        "Modes of P13: " + "; ".join(f"{mode}: {text}" for mode, (_, text) in p13_batch_norm_bandwidth.MODES.items())
        + ".", quick=("graph", "xla", "jax", "torch"), used_by=("P13",))
    bandwidth_rounds: int = _setting(21, "Alternating timing rounds of P13.", quick=1, used_by=("P13",))
    bandwidth_steps_per_round: int = _setting(5, "Steps timed per round in P13.", quick=1, used_by=("P13",))
    compare_onednn: bool = _setting(True, "Also time ResNet-50 training with TF_ENABLE_ONEDNN_OPTS=0 and =1.",
                                    quick=False)
    onednn_rounds: int = _setting(2, "Subprocesses per TF_ENABLE_ONEDNN_OPTS value.", used_by=("oneDNN",))

    @classmethod
    def from_dict(cls, values):
        """The `Settings` of `values` (as in benchmark.json's "config"), lists
        read as tuples; fields not given keep their defaults."""
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})

    def check(self):
        """Raises ValueError, its message starting with the name of the
        first setting that cannot be measured and saying what to give
        instead."""
        unknown = sorted(set(self.figures) - set(SELECTABLE))
        if unknown:
            raise ValueError(f"figures: unknown {', '.join(unknown)}; choose from {', '.join(SELECTABLE)}.")
        for name in ("resnet_modes", "layers_modes"):
            for mode in getattr(self, name):
                if mode not in benchmarking.MODES:
                    raise ValueError(f"{name}: unknown mode {mode!r}; choose from {', '.join(benchmarking.MODES)}.")
        for case in self.layers_cases:
            if case not in p2_batch_norm.CASES:
                raise ValueError(f"layers_cases: unknown {case!r}; choose from {', '.join(p2_batch_norm.CASES)}.")
        for mode in self.bandwidth_modes:
            if mode not in p13_batch_norm_bandwidth.MODES:
                raise ValueError(f"bandwidth_modes: unknown mode {mode!r}; choose from "
                                 f"{', '.join(p13_batch_norm_bandwidth.MODES)}.")
        for depth in self.wrn_depths:
            if not depth.isdigit() or int(depth) < 10 or (int(depth) - 4) % 6:
                raise ValueError(f"wrn_depths: {depth!r} is not a WRN depth n = 6N + 4 (10, 16, 22, ...).")
        if "P7" in self.figures and len(self.wrn_depths) < 2:
            raise ValueError("wrn_depths: P7 fits a line, give at least 2 depths.")
        for name in ("sync_bn_model", "replica_model", "build_model", "fashion_model"):
            try:
                models.check_name(getattr(self, name))
            except (ValueError, TypeError) as error:
                raise ValueError(f"{name}: {error}") from None


def quick_values():
    """{field name: value} of the fields that --quick changes."""
    return {
        field.name: field.metadata["quick"]
        for field in dataclasses.fields(Settings)
        if field.metadata["quick"] is not _NOT_QUICK
    }


def used_by(figure_ids, *, selection=False):
    """Names of the fields that the figures `figure_ids` read, in field
    order; with `selection`, also those that choose what a run measures
    (quick, figures, compare_onednn)."""
    return [
        field.name
        for field in dataclasses.fields(Settings)
        if set(field.metadata["used_by"]) & set(figure_ids) or (selection and not field.metadata["used_by"])
    ]
