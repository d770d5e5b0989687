"""Training: the configuration of a run (`TrainConfig`, grouped by
concern), strategies, XLA step forms, the loop behind the commands
normzoo-train and normzoo-finetune, and fine-tuning from pretrained
checkpoints."""

from normzoo import backends

# Before anything imports TensorFlow: where it is not installed (a JAX
# environment), the error is normzoo's BackendError, not an ImportError.
backends.require_installed_tensorflow("normzoo.training (the tf.distribute training loop)")

from normzoo.training.config import (
    BN_MODES,
    ConfigError,
    DataConfig,
    DistributionConfig,
    FinetuneConfig,
    ModelConfig,
    OptimizationConfig,
    RunConfig,
    TrainConfig,
)
from normzoo.training.distribute import STRATEGIES, XLA_FORMS, choose_xla_form, make_strategy
from normzoo.training.finetune import Initialization
from normzoo.training.loop import TrainingDiverged, TrainResult, make_optimizer, train
from normzoo.training.steps import EvalStep, TrainStep, evaluate

__all__ = [
    "BN_MODES",
    "STRATEGIES",
    "XLA_FORMS",
    "ConfigError",
    "DataConfig",
    "DistributionConfig",
    "EvalStep",
    "FinetuneConfig",
    "Initialization",
    "ModelConfig",
    "OptimizationConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "TrainingDiverged",
    "choose_xla_form",
    "evaluate",
    "make_optimizer",
    "make_strategy",
    "train",
]
