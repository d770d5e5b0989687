"""The configuration of a training run: `TrainConfig`, grouped by concern.

    config = TrainConfig.from_flat(model="wrn_16_4", norm="skipinit", epochs=30)
    config.model.norm              # "skipinit"
    config.optimization.epochs     # 30
    config.flat()["epochs"]        # 30: the fields by their flag names
    config.replace(seed=1)         # a copy with some of those changed

Every field is a flag of scripts/train.py with the same name
(`normzoo.training.cli`), and `flat()` is what a run's flags.json records.
A configuration never changes: `normzoo.training.train` validates it, then
runs a copy with the inputs it left unset resolved (`with_inputs`).
"""

import dataclasses
import math

from normzoo import data, models
from normzoo.naming import NORMS
from normzoo.training.distribute import STRATEGIES
from normzoo.training.finetune import BN_MODES as _BN_MODE_TEXTS

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
MIXED_PRECISION = (None, "float16", "bfloat16")
INPUT_SHARDING = ("pipeline", "global_batch")
BN_MODES = tuple(_BN_MODE_TEXTS)

# The inputs a configuration may leave unset (None) for `train` to take from
# its init checkpoint (or from the flags.json of the run it resumes).
INPUT_FIELDS = ("preprocess_mode", "channels", "layout")


class ConfigError(ValueError):
    """The configuration is invalid; nothing was built or written."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: `model` (a name of `normzoo.models.names()`) with `norm`
    in every residual block (one of `normzoo.naming.NORMS`).

    `layout` is where an ImageNet ResNet has its strides and biases (see
    `normzoo.models.resnet.LAYOUTS`); None: the init checkpoint's, else the
    model's default. `skipinit_alpha` is the initial SkipInit scalar
    (norm="skipinit" only; None: the layer's default). `num_classes` is the
    classifier's width; None: the dataset's.
    """

    model: str = "resnet20"
    norm: str = "batch"
    layout: str | None = None
    skipinit_alpha: float | None = None
    num_classes: int | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the run learns from, and how each image is prepared.

    `dataset` is a TFDS name ("digits" is embedded), read from `data_dir`.
    `train_split` is the split trained on: "train", or a slice of it such as
    "train[:1150]" that leaves the rest ("train[1150:]") for choosing
    hyperparameters (the lab's grids do); the test split is never trained
    on. `image_size` resizes the images (None: native).

    `preprocess_mode` is the normalization of every image (a mode of
    `normzoo.data.load`: "tf", "torch", "caffe" or "vgg"); None feeds what
    the init checkpoint's weights expect (its
    `RestoreReport.preprocess_mode`: "torch" for torchvision and timm,
    "caffe" for keras.applications' ResNet50, ...), or "tf" when there is
    none or it does not say. `channels` is the input channels (None: the
    init checkpoint's, else the dataset's; grey images become RGB for a
    3-channel checkpoint). `invert_images` inverts the pixel values (a
    domain shift, see `normzoo.data.load`).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    train_split: str = "train"
    image_size: int | None = 32
    channels: int | None = None
    preprocess_mode: str | None = None
    invert_images: bool = False


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """How long and how the weights are trained.

    `batch_size` is the global batch, split evenly over the replicas;
    `learning_rate` is the peak rate for that global batch, followed by
    `schedule` ("constant", "cosine" or "step") after `warmup_epochs` of
    linear warm-up. `steps_per_epoch` defaults to the training split's size
    over the global batch (every batch is full, so that every step has the
    same shape, which XLA wants). `optimizer` is one of `OPTIMIZERS`, with
    decoupled `weight_decay` (0: none) that spares biases, normalization
    parameters and SkipInit scalars (see `normzoo.training.make_optimizer`).
    """

    batch_size: int = 64
    epochs: int = 10
    steps_per_epoch: int | None = None
    optimizer: str = "momentum"
    learning_rate: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    """Where the steps run and how they are compiled.

    `strategy` is the `tf.distribute` strategy (one of
    `normzoo.training.STRATEGIES`; `tpu`: the TPU's address). `sync_bn`
    makes BatchNorm normalize with the global batch's statistics
    (norm="batch" only). `input_sharding` says how several input pipelines
    (one per worker under MultiWorkerMirroredStrategy) share the training
    data: "pipeline" gives each its own part of the split (the efficient
    default); "global_batch" makes every pipeline build the same global
    batches and keep its slice, so that the global batches, and the run,
    are the same for any number of workers and replicas (each worker then
    reads the whole split). `jit_compile` XLA-compiles the training step in
    the form that works under the strategy (`normzoo.training.XLA_FORMS`);
    `mixed_precision` is None, "float16" or "bfloat16".
    """

    strategy: str = "default"
    tpu: str | None = None
    sync_bn: bool = False
    input_sharding: str = "pipeline"
    jit_compile: bool = False
    mixed_precision: str | None = None


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Starting from a pretrained checkpoint.

    `init_checkpoint` (any format of `normzoo.checkpoints.restore`) holds
    the same model and norm. Every variable is restored, strictly, except
    the classifier when the checkpoint has another number of classes than
    the model's `num_classes`, which is new. `bn` is "train" (batch
    statistics, moving statistics updated), "frozen_stats" (moving
    statistics used and never updated; gamma and beta trained), "frozen"
    (gamma and beta fixed too) or "recalibrated" (the moving statistics
    re-estimated on the first training batches, then as "frozen_stats").
    """

    init_checkpoint: str | None = None
    bn: str = "train"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where the run writes, and how it repeats.

    `model_dir` holds its checkpoints (every epoch, and every
    `checkpoint_steps` steps if not 0; the last `max_checkpoints` kept),
    logs and metrics; running the same configuration again resumes there.
    `seed` seeds everything random (initialization, data order,
    augmentation, dropout). `deterministic=True` also makes TensorFlow run
    deterministic op implementations (see
    `normzoo.runtime.deterministic_ops`): the same configuration then gives
    bit-identical weights, optimizer state and metrics, on one device and
    under MirroredStrategy, at some cost in step time (benchmark P11 of
    lab/benchmark.py); without it, TensorFlow's non-deterministic kernels
    (on GPUs, for instance) may round differently from run to run.
    `verbose` prints progress.
    """

    model_dir: str = "runs/default"
    checkpoint_steps: int = 0
    max_checkpoints: int = 3
    seed: int = 0
    deterministic: bool = False
    verbose: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run, grouped by concern:

        model         ModelConfig: the network (model, norm, layout,
                      skipinit_alpha, num_classes)
        data          DataConfig: the dataset and how images are prepared
                      (dataset, data_dir, train_split, image_size,
                      channels, preprocess_mode, invert_images)
        optimization  OptimizationConfig: batch, length and optimizer
                      (batch_size, epochs, steps_per_epoch, optimizer,
                      learning_rate, schedule, warmup_epochs, weight_decay)
        distribution  DistributionConfig: strategy, XLA and precision
                      (strategy, tpu, sync_bn, input_sharding,
                      jit_compile, mixed_precision)
        finetune      FinetuneConfig: a pretrained start (init_checkpoint,
                      bn)
        run           RunConfig: where it writes and how it repeats
                      (model_dir, checkpoint_steps, max_checkpoints, seed,
                      deterministic, verbose)

    Each group's docstring says what its fields mean. A field's name is
    that of its flag in scripts/train.py and of its key in flags.json, and
    no two groups share one: `from_flat(**fields)` builds a configuration
    from them (the others keep their defaults), `flat()` gives them back,
    `replace(**fields)` changes some. `TrainConfig(model=ModelConfig(...),
    ...)` builds one from its groups.

    `validate()` checks the fields, alone and together; `train` calls it
    first. The inputs `data.preprocess_mode`, `data.channels` and
    `model.layout` may be left None for `train` to take from the init
    checkpoint (`with_inputs`); flags.json records the values used, and a
    resumed run takes them from there.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimization: OptimizationConfig = dataclasses.field(default_factory=OptimizationConfig)
    distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self):
        for name, group in _GROUPS.items():
            if not isinstance(getattr(self, name), group):
                raise TypeError(
                    f"TrainConfig({name}={getattr(self, name)!r}): {name} is a {group.__name__}. "
                    f"To give fields by their flag names, use TrainConfig.from_flat({name}=...)."
                )

    @classmethod
    def from_flat(cls, **fields):
        """The configuration with `fields` (flag names: model="resnet20",
        epochs=3, ...) and the defaults for the others.

        Raises:
            TypeError: a name that is no field, naming the fields.
        """
        unknown = [name for name in fields if name not in _GROUP_OF]
        if unknown:
            raise TypeError(
                f"TrainConfig has no field {', '.join(map(repr, unknown))}; its fields (the flags "
                f"of scripts/train.py) are {', '.join(_GROUP_OF)}."
            )
        grouped = {name: {} for name in _GROUPS}
        for name, value in fields.items():
            grouped[_GROUP_OF[name]][name] = value
        return cls(**{name: _GROUPS[name](**values) for name, values in grouped.items()})

    def flat(self):
        """{field name: value} of every field, group by group: the flags'
        names and flags.json's keys."""
        return {
            field.name: getattr(getattr(self, group), field.name)
            for group, group_class in _GROUPS.items()
            for field in dataclasses.fields(group_class)
        }

    def replace(self, **fields):
        """A copy with `fields` (flag names) changed."""
        return TrainConfig.from_flat(**{**self.flat(), **fields})

    def with_inputs(self, **found):
        """The configuration a run uses: this one with each of
        `INPUT_FIELDS` that it leaves None set to `found`'s value (what the
        init checkpoint or the resumed run says; None where it does not),
        and preprocess_mode "tf" where neither says."""
        flat = self.flat()
        values = {name: found.get(name) if flat[name] is None else flat[name] for name in INPUT_FIELDS}
        values["preprocess_mode"] = values["preprocess_mode"] or "tf"
        return self.replace(**values)

    def validate(self):
        """Raises ConfigError naming the first invalid field (as its flag,
        `--name=value`) and what is valid."""
        values = self.flat()
        choices = {
            "norm": NORMS,
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "mixed_precision": MIXED_PRECISION,
            "strategy": STRATEGIES,
            "input_sharding": INPUT_SHARDING,
            "bn": BN_MODES,
        }
        if values["preprocess_mode"] is not None:
            choices["preprocess_mode"] = data.preprocessing.PREPROCESS_MODES
        for field, valid in choices.items():
            if values[field] not in valid:
                raise ConfigError(
                    f"Invalid {field}={values[field]!r} (--{field}); choose one of "
                    f"{', '.join(str(v) for v in valid)}."
                )
        try:
            models.check_name(values["model"])
        except ValueError as error:
            raise ConfigError(f"model={values['model']!r} (--model): {error}") from None
        defaults = TrainConfig().flat()
        for field in ("batch_size", "epochs", "learning_rate"):
            if not 0 < values[field] < math.inf:
                raise ConfigError(
                    f"{field}={values[field]!r} (--{field}) must be positive and finite; pass e.g. "
                    f"--{field}={defaults[field]} (the default)."
                )
        for field in ("steps_per_epoch", "image_size", "num_classes"):
            if values[field] is not None and values[field] <= 0:
                raise ConfigError(
                    f"{field}={values[field]!r} (--{field}) must be positive, or unset (0 on the "
                    f"command line) for the default."
                )
        for field in ("weight_decay", "warmup_epochs", "checkpoint_steps"):
            if not 0 <= values[field] < math.inf:
                raise ConfigError(
                    f"{field}={values[field]!r} (--{field}) must be >= 0 and finite; 0 turns it off."
                )
        model, norm, bn = self.model, self.model.norm, self.finetune.bn
        if model.layout is not None:
            try:
                models.check_arguments(model.model, layout=model.layout)
            except ValueError as error:
                raise ConfigError(f"layout={model.layout!r} (--layout): {error}") from None
        if self.distribution.sync_bn and norm != "batch":
            raise ConfigError(f"sync_bn applies to norm='batch' only; got norm={norm!r}.")
        if model.skipinit_alpha is not None and norm != "skipinit":
            raise ConfigError(f"skipinit_alpha applies to norm='skipinit' only; got norm={norm!r}.")
        if bn != "train" and norm != "batch":
            raise ConfigError(
                f"bn={bn!r} freezes BatchNorm layers, and norm={norm!r} has none; "
                "use bn='train' (or norm='batch')."
            )
        if bn != "train" and not self.finetune.init_checkpoint:
            raise ConfigError(
                f"bn={bn!r} without init_checkpoint would freeze the initial statistics "
                "(mean 0, variance 1) of an untrained model; pass init_checkpoint or bn='train'."
            )


# {group name: its class}, and {field name: its group's name}.
_GROUPS = {field.name: field.default_factory for field in dataclasses.fields(TrainConfig)}
_GROUP_OF = {
    field.name: group for group, group_class in _GROUPS.items() for field in dataclasses.fields(group_class)
}
