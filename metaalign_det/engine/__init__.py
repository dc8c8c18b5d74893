from .trainer import MetaAlignTrainer, build_step_trainer
from .loss_evaluator import LossEvaluator
from .train_loop import MetaAlignAMPTrainer, MetaAlignSimpleTrainer, MetaAlignStepOptions

__all__ = ["MetaAlignTrainer", "build_step_trainer", "LossEvaluator", "MetaAlignSimpleTrainer",
           "MetaAlignAMPTrainer", "MetaAlignStepOptions"]
