"""Training: strategies, XLA step forms, the loop behind scripts/train.py and
scripts/finetune.py, and fine-tuning from pretrained checkpoints."""

from normzoo import backends

# Before anything imports TensorFlow: where it is not installed (a JAX
# environment), the error is normzoo's BackendError, not an ImportError.
backends.require_installed_tensorflow("normzoo.training (the tf.distribute training loop)")

from normzoo.training.distribute import STRATEGIES, XLA_FORMS, choose_xla_form, make_strategy
from normzoo.training.finetune import Initialization, evaluate_batch_dependence
from normzoo.training.loop import (
    BN_MODES,
    INIT_VARIABLES,
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    make_optimizer,
    train,
)
from normzoo.training.steps import EvalStep, TrainStep, evaluate

__all__ = [
    "BN_MODES",
    "INIT_VARIABLES",
    "STRATEGIES",
    "XLA_FORMS",
    "ConfigError",
    "EvalStep",
    "Initialization",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "TrainingDiverged",
    "choose_xla_form",
    "evaluate",
    "evaluate_batch_dependence",
    "make_optimizer",
    "make_strategy",
    "train",
]
