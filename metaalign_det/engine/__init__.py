"""Training: ``MetaAlignTrainer`` (detectron2's DefaultTrainer with the MetaAlign step), the step classes and
the loss adapter between model and meta step."""
from .. import compat

compat.apply()  # before any detectron2 import; without detectron2: ImportError saying how to get it

from .loss_evaluator import LossEvaluator
from .train_loop import MetaAlignAMPTrainer, MetaAlignSimpleTrainer, MetaAlignStepOptions
from .trainer import MetaAlignTrainer, build_step_trainer

__all__ = ["MetaAlignTrainer", "build_step_trainer", "LossEvaluator", "MetaAlignSimpleTrainer",
           "MetaAlignAMPTrainer", "MetaAlignStepOptions"]
