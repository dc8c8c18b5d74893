"""Teacher-student adaptation: a mean teacher (EMA of the student) pseudo-labels the weak target view and the
student learns those labels on the strong view, with or without alignment and inside MetaAlign's meta step.
docs/teacher.md has the recipe, the keys and the cost per step.

One step (``TeacherStepMixin.compute_gradients``), iteration ``t``:

1. ``t < TEACHER.BURN_IN_ITERS``: a source-only supervised step (no alignment, no pseudo-labels; the target
   batch is drawn and discarded so the data streams stay those of the uninterrupted run). The EMA is updated.
2. ``t == BURN_IN_ITERS`` and ``TEACHER.INIT == "student"``: teacher <- a copy of the student.
3. The teacher (the EMA, eval mode, ``torch.no_grad()``) detects on the weak target view (per-class NMS and
   the test-time detection limit as in inference); detections scoring >= ``TEACHER.SCORE_THRESH`` are the
   pseudo-labels, in the weak view's pixel frame -- which is the strong view's frame (photometric only).
   This happens ONCE per step: pseudo-labels do not depend on the student's parameters.
4. The student's pseudo-label losses -- detectron2's detection losses on the strong target view with the
   pseudo-labels as ground truth, only those named in ``TEACHER.LOSSES`` (default: RPN objectness and ROI
   classification), times ``TEACHER.LOSS_WEIGHT``, named ``loss_pseudo_<name>`` -- join the *detection* group
   (they do not start with ``loss_da_``). The step's :class:`PseudoLabelLossEvaluator` adds them to every
   evaluation of the detection loss, at whatever parameters the meta step asks for (θ, θ', θ ± εv). So in
   MetaAlign the alignment losses are the meta-train task and source detection + pseudo-labels the meta-test
   task (``align_first``), or the reverse (``det_first``), in every ``META.MODE``.
5. After the optimizer step the EMA is updated (``MODEL.EMA.DECAY``).

Every process pseudo-labels its own target images and runs the same passes and the same collectives (one
all-reduce of the gradients; more in the meta modes) whether or not it found any pseudo-label: an image
without pseudo-labels is a background-only image for the pseudo losses.

The jobs live in their own modules: the keys and their validation in engine/teacher_config.py, the
pseudo-labels and their loss in engine/pseudo_labels.py, the monitoring in engine/pseudo_label_monitor.py;
this module is the step.

Monitoring (``teacher/*`` metrics, never used for training): pseudo-labels per image and their mean score
every step; ``teacher/agreement`` (student vs teacher detections on the weak target view, Dice of the
class-aware IoU >= 0.5 matches) every ``TEACHER.MONITOR_PERIOD`` steps; with ``TEACHER.MONITOR_GT`` the
pseudo-labels' precision and recall at IoU 0.5 against the target labels, fetched from ``DatasetCatalog``
by file name and moved into the weak view's frame with the transform the target mapper recorded -- the
training loader itself never carries target labels.
"""
import dataclasses
import logging
from typing import List, Optional

import torch

from ..data.augmentation import SOURCE_STREAM, STRONG_IMAGE, TARGET_STREAM
from .ema import ModelEMA
from .pseudo_label_monitor import PseudoLabelMonitor, TargetLabelIndex, count_matches
from .pseudo_labels import PSEUDO_LOSS_PREFIX, PseudoLabelLoss, PseudoLabelLossEvaluator, pseudo_label, pseudo_loss_name
from .teacher_config import DET_LOSS_NAMES, TeacherConfig, check_teacher_config, uses_teacher_step
from .train_loop import MetaAlignAMPTrainer, MetaAlignSimpleTrainer

__all__ = [
    "DET_LOSS_NAMES",
    "PSEUDO_LOSS_PREFIX",
    "TeacherConfig",
    "check_teacher_config",
    "uses_teacher_step",
    "pseudo_label",
    "pseudo_loss_name",
    "PseudoLabelLoss",
    "PseudoLabelLossEvaluator",
    "PseudoLabelMonitor",
    "TargetLabelIndex",
    "count_matches",
    "TeacherStepMixin",
    "TeacherSimpleTrainer",
    "TeacherAMPTrainer",
    "build_teacher_step_trainer",
]

logger = logging.getLogger(__name__)


class TeacherStepMixin:
    """Adds to a MetaAlign step trainer: strong views, the EMA (``self.ema``), the mean teacher and its
    pseudo-label losses, and the ``teacher/*`` metrics (see the module docstring).

    Constructor: the step trainer's arguments plus ``teacher_config`` (:class:`TeacherConfig`).
    """

    def __init__(self, *args, teacher_config: TeacherConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.tcfg = teacher_config
        self.ema = ModelEMA(self.model, teacher_config.ema_decay) if teacher_config.ema else None
        labels = (TargetLabelIndex(teacher_config.target_datasets)
                  if teacher_config.teacher and teacher_config.monitor_gt else None)
        self.monitor = PseudoLabelMonitor(teacher_config.score_thresh, teacher_config.monitor_period, labels)

    # -- views -----------------------------------------------------------------------------------------
    def _strong_images(self, batch: List[dict], stream: int) -> List[torch.Tensor]:
        """The strong views of a batch: built and seeded by the data loader (data/augmentation.py,
        ``StrongViewMapper``); a batch without them is one clear error (a loader that does not build them)."""
        missing = [d.get("file_name", "<no file_name>") for d in batch if STRONG_IMAGE not in d]
        if missing:
            which = "source" if stream == SOURCE_STREAM else "target"
            raise ValueError(f"{which} batch of iteration {self.iter}: {missing[0]!r} has no {STRONG_IMAGE!r}; the "
                             f"strong views are built by the paired loader (data/augmentation.StrongViewMapper); a "
                             f"loader of your own must add them (data/augmentation.add_strong_views)")
        return [d[STRONG_IMAGE] for d in batch]

    def in_burn_in(self) -> bool:
        return self.tcfg.teacher and self.iter < self.tcfg.burn_in

    # -- the step's pieces -----------------------------------------------------------------------------
    def build_loss_evaluator(self, source, target, pseudo_loss: Optional[PseudoLabelLoss] = None):
        """The step's evaluator; ``pseudo_loss`` (this step's pseudo-label losses) joins the detection group."""
        return PseudoLabelLossEvaluator(self.model, source, target, self.autocast_context, self.step_seed(),
                                        pseudo_loss)

    def compute_gradients(self, source, target):
        c = self.tcfg
        if c.source_views != "weak":
            strong = [dict(d, image=img) for d, img in zip(source, self._strong_images(source, SOURCE_STREAM))]
            source = strong if c.source_views == "strong" else list(source) + strong
        if self.in_burn_in():
            return self._source_only_gradients(source)
        metrics, pseudo_loss = {}, None
        if c.teacher:
            if self.iter == c.burn_in and c.init == "student":
                self.ema.copy_from(self.model)  # Adaptive Teacher: the teacher starts as the student
            pseudo = pseudo_label(self.ema.model, target, c.score_thresh, self.autocast_context)
            images = self._strong_images(target, TARGET_STREAM) if c.strong_target else [d["image"] for d in target]
            batch = [{"image": img, "instances": inst} for img, inst in zip(images, pseudo)]
            pseudo_loss = PseudoLabelLoss(self.model, batch, c.losses, c.loss_weight)
            metrics = self.monitor(self.model, self.iter, target, pseudo, self.autocast_context)
        # the pseudo-label losses reach the loss evaluator explicitly; they go with this step's evaluator
        evaluator = self.build_loss_evaluator(source, target, pseudo_loss)
        grads, stats, losses = super().compute_gradients(source, target, evaluator=evaluator)
        stats.update(metrics)
        return grads, stats, losses

    def _source_only_gradients(self, source):
        """Burn-in: supervised source loss only -- META.MODE is 'none' for these steps (nothing to align)."""
        saved = self.options
        self.options = dataclasses.replace(saved, mode="none")
        try:
            grads, stats, losses = super().compute_gradients(source, None,
                                                             evaluator=self.build_loss_evaluator(source, None))
        finally:
            self.options = saved
        stats["teacher/burn_in"] = 1.0
        return grads, stats, losses

    def optimizer_step(self):
        super().optimizer_step()
        if self.ema is not None:
            self.ema.update(self.model)


class TeacherSimpleTrainer(TeacherStepMixin, MetaAlignSimpleTrainer):
    """fp32 MetaAlign step with the teacher-student additions."""


class TeacherAMPTrainer(TeacherStepMixin, MetaAlignAMPTrainer):
    """Mixed-precision MetaAlign step with the teacher-student additions."""


def build_teacher_step_trainer(cfg, model, data_loader, optimizer, options):
    """The step trainer when :func:`uses_teacher_step` (called by ``engine.trainer.build_step_trainer``)."""
    tc = TeacherConfig.from_config(cfg)
    if cfg.SOLVER.AMP.ENABLED:
        return TeacherAMPTrainer(model, data_loader, optimizer, options, seed=cfg.SEED, dtype=cfg.SOLVER.AMP.DTYPE,
                                 teacher_config=tc)
    return TeacherSimpleTrainer(model, data_loader, optimizer, options, seed=cfg.SEED, teacher_config=tc)
