"""``MetaAlignTrainer``: detectron2's DefaultTrainer with a paired (source, target) loader, the MetaAlign
step (every META.MODE, ``none`` = joint DA), data-parallel gradient averaging without DDP
(see :mod:`metaalign_det.engine.distributed`), atomic checkpoints and resumable data streams.
Hooks, LR schedule, optimizer, gradient clipping and evaluation are detectron2's.

Inputs that would only fail later (at the first evaluation, after the whole schedule, or with a traceback)
are checked before the first iteration, each as one error naming the key: :func:`check_device`,
:func:`check_step_config`, :func:`check_eval_config` (at construction) and :func:`check_model_weights`
(in ``resume_or_load``, when MODEL.WEIGHTS is what gets loaded)."""
import logging
import math
import os
import weakref
from typing import Dict, Iterable, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase, hooks
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventWriter
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from .. import compat
from ..config import alignment_heads_enabled
from ..data.augmentation import build_target_view_mapper
from ..data.paired_loader import PairedDataLoader, build_paired_train_loader, check_dataset_names
from ..evaluation import DetectionAPEvaluator, build_evaluator, unlabelled_reason
from ..options import EvalOptions
from .checkpoint import AtomicDetectionCheckpointer, unreadable_resume_message
from .distributed import broadcast_module_
from .printer import TrainingMetricPrinter
from .setup import FILE_ONLY, in_context_chain
from .teacher import build_teacher_step_trainer, check_teacher_config, uses_teacher_step
from .train_loop import MetaAlignAMPTrainer, MetaAlignSimpleTrainer, MetaAlignStepOptions

__all__ = [
    "MetaAlignTrainer",
    "build_step_trainer",
    "check_device",
    "check_step_config",
    "check_solver_config",
    "check_eval_config",
    "check_model_weights",
    "check_num_gpus",
    "TrainingInterrupted",
    "launcher_interrupted_message",
]

logger = logging.getLogger(__name__)


def build_step_trainer(
    cfg: CfgNode, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer
) -> MetaAlignSimpleTrainer:
    """The factory that picks the ``run_step`` class: SimpleTrainer- or AMPTrainer-based."""
    options = MetaAlignStepOptions.from_config(cfg)
    if uses_teacher_step(cfg):  # teacher-student: EMA, mean teacher, strong views (engine/teacher.py)
        step = build_teacher_step_trainer(cfg, model, data_loader, optimizer, options)
    elif cfg.SOLVER.AMP.ENABLED:
        step = MetaAlignAMPTrainer(model, data_loader, optimizer, options, seed=cfg.SEED,
                                   dtype=cfg.SOLVER.AMP.DTYPE)
    else:
        step = MetaAlignSimpleTrainer(model, data_loader, optimizer, options, seed=cfg.SEED)
    # metrics are read from the device only when the PeriodicWriter writes (see MetaAlignSimpleTrainer)
    step.log_period, step.max_iter = cfg.SOLVER.LOG_PERIOD, cfg.SOLVER.MAX_ITER
    return step


def check_step_config(cfg: CfgNode) -> None:
    """Config combinations that cannot work, each as one clear error."""
    da_on = alignment_heads_enabled(cfg)
    if cfg.META.MODE != "none" and not da_on:
        raise ValueError(
            f"META.MODE={cfg.META.MODE!r} needs an alignment loss: enable MODEL.DA_HEADS.IMG_ENABLED "
            f"and/or INS_ENABLED (or MODEL.SWDA.LOCAL_ENABLED / GLOBAL_ENABLED)"
        )
    if da_on and cfg.MODEL.META_ARCHITECTURE != "DomainAdaptiveRCNN":
        raise ValueError(
            f"MODEL.DA_HEADS / MODEL.SWDA is enabled but MODEL.META_ARCHITECTURE is "
            f"{cfg.MODEL.META_ARCHITECTURE!r}: set it to 'DomainAdaptiveRCNN'"
        )
    check_teacher_config(cfg)  # MODEL.EMA / TEACHER / INPUT.STRONG_AUG
    check_solver_config(cfg, comm.get_world_size())


def check_solver_config(cfg: CfgNode, world_size: int = 1) -> None:
    """The schedule's numbers: batch sizes >= 1 and divisible by the number of processes (``world_size``:
    detectron2 splits a global batch evenly; the target batch only when DATASETS.TRAIN_TARGET is set),
    MAX_ITER >= 1, CHECKPOINT_PERIOD and LOG_PERIOD >= 1 (they are taken modulo), EVAL_PERIOD >= 0, BASE_LR a
    finite number > 0. Each as one error naming the key (detectron2 would stop later with an assertion or a
    ZeroDivisionError traceback)."""
    s = cfg.SOLVER
    batches = [("SOLVER.IMS_PER_BATCH", s.IMS_PER_BATCH)]
    if len(cfg.DATASETS.TRAIN_TARGET):
        batches.append(("SOLVER.TARGET_IMS_PER_BATCH", s.TARGET_IMS_PER_BATCH))
    for key, n in batches:
        if n < 1:
            raise ValueError(f"{key} is {n}: expected the number of images per step over all processes, >= 1")
        if n % world_size:
            raise ValueError(f"{key} is {n}, which {world_size} processes cannot share evenly: use a multiple of "
                             f"{world_size}")
    for key, value, least in (("SOLVER.MAX_ITER", s.MAX_ITER, 1), ("SOLVER.CHECKPOINT_PERIOD", s.CHECKPOINT_PERIOD, 1),
                              ("SOLVER.LOG_PERIOD", s.get("LOG_PERIOD", 1), 1),
                              ("TEST.EVAL_PERIOD", cfg.TEST.EVAL_PERIOD, 0)):
        if value < least:
            raise ValueError(f"{key} is {value}: expected an integer >= {least}")
    if not (math.isfinite(s.BASE_LR) and s.BASE_LR > 0):
        raise ValueError(f"SOLVER.BASE_LR is {s.BASE_LR}: expected a finite learning rate > 0")


def _one_line(e):
    return " ".join(str(e).split())


def check_device(cfg: CfgNode) -> None:
    """MODEL.DEVICE must name a device this machine has (the shipped full-size configs say 'cuda')."""
    name = cfg.MODEL.DEVICE
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"MODEL.DEVICE {name!r} is not a torch device: expected 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"MODEL.DEVICE is {name!r} but this machine has no usable CUDA device: add `MODEL.DEVICE cpu` "
                f"to the command line (or use a configs/quick_schedules config, made for CPUs)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"MODEL.DEVICE is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )


def check_num_gpus(num_gpus: int) -> None:
    """``--num-gpus N`` (N > 1) needs N CUDA devices: detectron2's ``launch`` starts one process per GPU (and
    fails after a while, with a traceback per process, without them). The same check for every tool."""
    if num_gpus <= 1:
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < num_gpus:
        raise ValueError(f"--num-gpus {num_gpus} needs {num_gpus} CUDA devices, this machine has "
                         f"{n or 'no usable CUDA device'}: use --num-gpus {max(n, 1)}")


def _caused_by_interrupt(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in ``error``'s context chain."""
    return in_context_chain(error, KeyboardInterrupt) is not None


def launcher_interrupted_message(output_dir: str) -> str:
    """The line for Ctrl-C / SIGTERM in the process that launched several training processes (it does not know
    their iteration): the checkpoint ``OUTPUT_DIR/last_checkpoint`` names, which ``--resume`` continues from.
    The workers stop on their own signal (or when their launcher ends); a checkpoint being written completes."""
    tag = os.path.join(output_dir, "last_checkpoint")
    last = ""
    if PathManager.exists(tag):
        with PathManager.open(tag) as f:
            last = os.path.join(output_dir, f.read().strip())
    return f"interrupted; {_resume_hint(last)}"


def _resume_hint(last_checkpoint: str) -> str:
    """What ``--resume`` continues from, given the checkpoint last_checkpoint names ("" if none)."""
    if not last_checkpoint:
        return "no checkpoint was written yet: run again without --resume to start from the beginning"
    return f"the last checkpoint is {last_checkpoint}: resume with --resume"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message (one line) says where it stopped and what ``--resume`` continues
    from."""


def check_eval_config(cfg: CfgNode) -> None:
    """TEST.AP_METRIC / TEST.AP_IOU are valid and every DATASETS.TEST name is registered and loads.

    Loading each test set here (their loaders read annotation caches and check that the files exist) makes
    a missing split fail now instead of at the first evaluation (TEST.EVAL_PERIOD) or after the schedule.
    """
    EvalOptions.from_config(cfg)  # TEST.AP_METRIC / AP_IOU / AP_COCO
    names = list(cfg.DATASETS.TEST)
    check_dataset_names("DATASETS.TEST", names, allow_empty=True)
    for name in names:
        try:
            dicts = DatasetCatalog.get(name)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"DATASETS.TEST: dataset '{name}' is registered but its files are missing: "
                                    f"{_one_line(e)}") from None
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"DATASETS.TEST: dataset '{name}' cannot be loaded: {_one_line(e)}") from None
        if not dicts:
            raise ValueError(f"DATASETS.TEST: dataset '{name}' has no images")
        reason = unlabelled_reason(name, dicts)
        if reason:
            raise ValueError(f"DATASETS.TEST: {reason}")


def check_model_weights(path: str, key: str = "MODEL.WEIGHTS") -> None:
    """A local weights file must exist and be readable; "" (random init) and URLs (``detectron2://``,
    ``https://``: fetched by detectron2 when loaded) pass. A file that exists but is not a checkpoint is
    reported when it is loaded (:class:`AtomicDetectionCheckpointer`)."""
    if not path or "://" in path:
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"{key} {path}: no such file (expected a .pth/.pkl checkpoint, or \"\" for "
                                f"random initialisation)")
    if not os.path.isfile(path):
        raise ValueError(f"{key} {path}: is a directory, expected a .pth/.pkl checkpoint file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ValueError(f"{key} {path}: cannot be read ({e.strerror or e})") from None


class MetaAlignTrainer(DefaultTrainer):
    """DefaultTrainer whose step trains on (source, target) pairs with the MetaAlign / joint DA gradient."""

    def __init__(self, cfg: CfgNode) -> None:
        # Mirrors DefaultTrainer.__init__ except for: the step class (factory), no DDP wrapper (gradients are
        # averaged by the step, parameters broadcast here), and the atomic checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_device(cfg)
        check_step_config(cfg)
        check_eval_config(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        broadcast_module_(model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self._data_seeds = data_loader.seeds
        compat.set_step_trainer(self, build_step_trainer(cfg, model, data_loader, optimizer))
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        if getattr(self.step_trainer, "ema", None) is not None:  # teacher-student: the EMA is the "ema" entry
            self.checkpointer.add_checkpointable("ema", self.step_trainer.ema)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @property
    def step_trainer(self) -> MetaAlignSimpleTrainer:
        """The step trainer that runs each iteration (what DefaultTrainer keeps as its ``_trainer``)."""
        return compat.step_trainer(self)

    def after_train(self) -> None:
        # the steps since the last log step (a run stopped by an error): their metrics reach the writers'
        # final write; no collective, since another process may not be there to join it
        self.step_trainer.flush_metrics(collective=False)
        super().after_train()

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """detectron2's ``build_model``; the module tree goes to log.txt only, the console gets one line."""
        model = build_model(cfg)
        log = logging.getLogger(__name__)
        log.info("Model:\n%s", model, extra=FILE_ONLY)
        n = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("Model: %s, %.2fM parameters (%.2fM trainable); its structure is in log.txt",
                 type(model).__name__, n / 1e6, n_train / 1e6)
        return model

    def build_hooks(self) -> List[HookBase]:
        """detectron2's hooks, with the PeriodicWriter at SOLVER.LOG_PERIOD (detectron2 fixes it at 20); with an
        EMA (teacher-student) the EvalHook evaluates the EMA -- the teacher -- instead of the student."""
        self._event_writers = None
        ret = super().build_hooks()  # calls build_writers() once (main process)
        if getattr(self.step_trainer, "ema", None) is not None:
            ret = [hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._test_ema) if isinstance(h, hooks.EvalHook) else h
                   for h in ret]
        if self._event_writers is None:
            return ret
        return [hooks.PeriodicWriter(self._event_writers, period=self.cfg.SOLVER.LOG_PERIOD)
                if isinstance(h, hooks.PeriodicWriter) else h for h in ret]

    def _test_ema(self) -> Dict:
        # recorded where DefaultTrainer.train() reads the last results (TEST.EXPECTED_RESULTS)
        return compat.record_eval_results(self, self.test(self.cfg, self.step_trainer.ema.model))

    def build_writers(self) -> List[EventWriter]:
        """detectron2's writers (metrics.json, TensorBoard) with our console line in place of
        CommonMetricPrinter: it adds ``meta/grad_cos`` and the discriminators' ``da/*`` accuracies."""
        self._event_writers = [TrainingMetricPrinter(self.max_iter) if isinstance(w, CommonMetricPrinter) else w
                         for w in super().build_writers()]
        return self._event_writers

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, start_iter: int = 0,
                           seeds: Optional[Dict[str, Optional[int]]] = None) -> PairedDataLoader:
        return build_paired_train_loader(cfg, start_iter=start_iter, seeds=seeds,
                                         target_mapper=build_target_view_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str,
                        output_folder: Optional[str] = None) -> DetectionAPEvaluator:
        return build_evaluator(cfg, dataset_name, output_folder)

    def train(self):
        """DefaultTrainer's ``train``; Ctrl-C becomes :class:`TrainingInterrupted` with a one-line message."""
        try:
            return super().train()
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.interrupted_message()) from None
        except Exception as e:
            # Ctrl-C inside a library call that then fails while unwinding (e.g. torch.save's zip writer closing
            # a half-written archive: RuntimeError "during handling of KeyboardInterrupt") is still Ctrl-C
            if _caused_by_interrupt(e):
                raise TrainingInterrupted(self.interrupted_message()) from None
            raise

    def interrupted_message(self) -> str:
        """Where training stopped and what ``--resume`` continues from (the checkpoint last_checkpoint names)."""
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
        return f"interrupted at iteration {self.iter}; {_resume_hint(last)}"

    def resume_or_load(self, resume: bool = True) -> None:
        resuming = resume and self.checkpointer.has_checkpoint()
        if not resuming:  # MODEL.WEIGHTS is what gets loaded
            check_model_weights(self.cfg.MODEL.WEIGHTS)
        # the file last_checkpoint names, in a local OUTPUT_DIR: missing or unreadable -> one line that names the
        # newest intact checkpoint and how to resume from it (never a silent fall-back to an older one)
        folder = self.checkpointer.save_dir
        path = self.checkpointer.get_checkpoint_file() if resuming else ""
        local = resuming and "://" not in path
        if local and not os.path.isfile(path):
            raise ValueError(unreadable_resume_message(self.model, folder, path, f"{path}: no such file"))
        try:
            super().resume_or_load(resume=resume)
        except compat.CheckpointReadError as e:
            if not local:
                raise
            raise compat.CheckpointReadError(unreadable_resume_message(self.model, folder, path, str(e))) from None
        ema = getattr(self.step_trainer, "ema", None)
        if ema is not None and not ema.restored:  # teacher-student: no "ema" in the checkpoint: start from
            ema.copy_from(self.model)              # the loaded weights (MODEL.WEIGHTS or the resumed model)
        if self.start_iter > 0:
            # Continue the data streams where the checkpointed run stopped, not from their beginning.
            start, seeds = self.start_iter, self._data_seeds
            compat.reset_data_loader(
                self.step_trainer, lambda: self.build_train_loader(self.cfg, start_iter=start, seeds=seeds)
            )
            logger.info("Resumed at iteration %d; data streams skip what was consumed", self.start_iter)

    # detectron2 v0.6's DefaultTrainer checkpoints only the iteration and the hooks: no optimizer state
    # (momentum, current lr), no grad scaler. Ours adds the step trainer's state (optimizer, grad scaler,
    # step seed, RNG) and the data-stream seeds, so a resumed run continues the uninterrupted one (weight for
    # weight under the conditions in docs/training.md: one process, no data-loading workers, ...).
    def state_dict(self) -> dict:
        ret = super().state_dict()
        if not compat.default_trainer_checkpoints_step_trainer():  # v0.6
            ret["_trainer"] = self.step_trainer.state_dict()
        ret["data_seeds"] = dict(self._data_seeds)
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict and not compat.default_trainer_checkpoints_step_trainer():  # v0.6
            self.step_trainer.load_state_dict(state_dict["_trainer"])
        if "data_seeds" in state_dict:
            self._data_seeds = dict(state_dict["data_seeds"])
