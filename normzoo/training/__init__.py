"""Training: strategies, XLA step forms and the loop behind scripts/train.py."""

from normzoo.training.distribute import STRATEGIES, XLA_FORMS, choose_xla_form, make_strategy
from normzoo.training.loop import ConfigError, TrainConfig, TrainingDiverged, TrainResult, evaluate, make_optimizer, train
from normzoo.training.steps import EvalStep, TrainStep

__all__ = [
    "STRATEGIES",
    "XLA_FORMS",
    "ConfigError",
    "EvalStep",
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
