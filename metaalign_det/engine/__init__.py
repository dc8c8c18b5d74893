from .trainer import MetaAlignTrainer, build_step_trainer
from .train_loop import LossEvaluator, MetaAlignAMPTrainer, MetaAlignSimpleTrainer, MetaAlignStepOptions

__all__ = ["MetaAlignTrainer", "build_step_trainer", "LossEvaluator", "MetaAlignSimpleTrainer",
           "MetaAlignAMPTrainer", "MetaAlignStepOptions"]
