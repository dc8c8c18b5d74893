"""``MetaAlignTrainer``: detectron2's DefaultTrainer with a paired (source, target) loader, the MetaAlign
step (every META.MODE, ``none`` = joint DA), data-parallel gradient averaging without DDP
(see :mod:`metaalign_det.engine.distributed`), atomic checkpoints and resumable data streams.
Hooks, LR schedule, optimizer, gradient clipping and evaluation are detectron2's."""
import logging
import weakref

from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from detectron2.utils.logger import setup_logger

from ..data.augmentation import build_target_view_mapper
from ..data.paired_loader import build_paired_train_loader
from .checkpoint import AtomicDetectionCheckpointer
from .distributed import broadcast_module_
from .printer import TrainingMetricPrinter
from .teacher import build_teacher_step_trainer, check_teacher_config, uses_teacher_step
from .train_loop import MetaAlignAMPTrainer, MetaAlignSimpleTrainer, MetaAlignStepOptions

__all__ = ["MetaAlignTrainer", "build_step_trainer"]

logger = logging.getLogger(__name__)


def build_step_trainer(cfg, model, data_loader, optimizer):
    """The factory that picks the ``run_step`` class: SimpleTrainer- or AMPTrainer-based."""
    options = MetaAlignStepOptions.from_config(cfg)
    if uses_teacher_step(cfg):  # teacher-student: EMA, mean teacher, strong views (engine/teacher.py)
        return build_teacher_step_trainer(cfg, model, data_loader, optimizer, options)
    if cfg.SOLVER.AMP.ENABLED:
        return MetaAlignAMPTrainer(model, data_loader, optimizer, options, seed=cfg.SEED,
                                   dtype=cfg.SOLVER.AMP.DTYPE)
    return MetaAlignSimpleTrainer(model, data_loader, optimizer, options, seed=cfg.SEED)


def check_step_config(cfg):
    """Config combinations that cannot work, each as one clear error."""
    da = cfg.MODEL.DA_HEADS
    if cfg.META.MODE != "none" and not (da.IMG_ENABLED or da.INS_ENABLED):
        raise ValueError(
            f"META.MODE={cfg.META.MODE!r} needs an alignment loss: enable MODEL.DA_HEADS.IMG_ENABLED "
            f"and/or INS_ENABLED"
        )
    if (da.IMG_ENABLED or da.INS_ENABLED) and cfg.MODEL.META_ARCHITECTURE != "DomainAdaptiveRCNN":
        raise ValueError(
            f"MODEL.DA_HEADS is enabled but MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}: "
            f"set it to 'DomainAdaptiveRCNN'"
        )
    check_teacher_config(cfg)  # MODEL.EMA / TEACHER / INPUT.STRONG_AUG


class MetaAlignTrainer(DefaultTrainer):
    """DefaultTrainer whose step trains on (source, target) pairs with the MetaAlign / joint DA gradient."""

    def __init__(self, cfg):
        # Mirrors DefaultTrainer.__init__ except for: the step class (factory), no DDP wrapper (gradients are
        # averaged by the step, parameters broadcast here), and the atomic checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_step_config(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        broadcast_module_(model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self._data_seeds = data_loader.seeds
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        if getattr(self._trainer, "ema", None) is not None:  # teacher-student: the EMA is the "ema" entry
            self.checkpointer.add_checkpointable("ema", self._trainer.ema)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.PeriodicWriter):
                h._period = self.cfg.SOLVER.LOG_PERIOD  # detectron2 fixes it at 20
            if isinstance(h, hooks.EvalHook) and getattr(self._trainer, "ema", None) is not None:
                h._func = self._test_ema  # teacher-student: evaluate the EMA (the teacher), not the student
        return ret

    def _test_ema(self):
        self._last_eval_results = self.test(self.cfg, self._trainer.ema.model)
        return self._last_eval_results

    def build_writers(self):
        """detectron2's writers (metrics.json, TensorBoard) with our console line in place of
        CommonMetricPrinter: it adds ``meta/grad_cos`` and the discriminators' ``da/*`` accuracies."""
        return [TrainingMetricPrinter(self.max_iter) if isinstance(w, CommonMetricPrinter) else w
                for w in super().build_writers()]

    @classmethod
    def build_train_loader(cls, cfg, start_iter=0, seeds=None):
        return build_paired_train_loader(cfg, start_iter=start_iter, seeds=seeds,
                                         target_mapper=build_target_view_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        ema = getattr(self._trainer, "ema", None)
        if ema is not None and not ema.restored:  # teacher-student: no "ema" in the checkpoint: start from
            ema.copy_from(self.model)              # the loaded weights (MODEL.WEIGHTS or the resumed model)
        if self.start_iter > 0:
            # Continue the data streams where the checkpointed run stopped, not from their beginning.
            loader = self.build_train_loader(self.cfg, start_iter=self.start_iter, seeds=self._data_seeds)
            self._trainer.data_loader = loader
            self._trainer._data_loader_iter = iter(loader)
            logger.info("Resumed at iteration %d; data streams skip what was consumed", self.start_iter)

    # detectron2 v0.6's DefaultTrainer checkpoints only the iteration and the hooks: no optimizer state
    # (momentum, current lr), no grad scaler. Ours adds the step trainer's state (optimizer, grad scaler,
    # step seed, RNG) and the data-stream seeds, so a resumed run continues the uninterrupted one.
    def state_dict(self):
        ret = super().state_dict()
        ret.setdefault("_trainer", self._trainer.state_dict())
        ret["data_seeds"] = dict(self._data_seeds)
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict and "load_state_dict" not in DefaultTrainer.__dict__:  # v0.6
            self._trainer.load_state_dict(state_dict["_trainer"])
        if "data_seeds" in state_dict:
            self._data_seeds = dict(state_dict["data_seeds"])
