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

Monitoring (``teacher/*`` metrics, never used for training): pseudo-labels per image and their mean score
every step; ``teacher/agreement`` (student vs teacher detections on the weak target view, Dice of the
class-aware IoU >= 0.5 matches) every ``TEACHER.MONITOR_PERIOD`` steps; with ``TEACHER.MONITOR_GT`` the
pseudo-labels' precision and recall at IoU 0.5 against the target labels, fetched from ``DatasetCatalog``
by file name and moved into the weak view's frame with the transform the target mapper recorded -- the
training loader itself never carries target labels.
"""
import contextlib
import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou
from detectron2.utils import comm

from ..data.augmentation import SOURCE_STREAM, TARGET_STREAM, StrongAugmentation, view_seed
from .distributed import world_size
from .ema import ModelEMA
from .loss_evaluator import LossEvaluator
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
    "TargetLabelIndex",
    "count_matches",
    "TeacherStepMixin",
    "TeacherSimpleTrainer",
    "TeacherAMPTrainer",
    "build_teacher_step_trainer",
]

logger = logging.getLogger(__name__)

# detectron2's Faster R-CNN training losses (what TEACHER.LOSSES may name)
DET_LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")
# pseudo-label losses: detection group (not "loss_da_"), told apart from the source losses by this prefix
PSEUDO_LOSS_PREFIX = "loss_pseudo_"
_INITS = ("student", "ema")
SOURCE_VIEWS = ("weak", "strong", "both")


def pseudo_loss_name(name: str) -> str:
    """``loss_rpn_cls`` -> ``loss_pseudo_rpn_cls``, ``loss_cls`` -> ``loss_pseudo_cls``."""
    return PSEUDO_LOSS_PREFIX + name[len("loss_"):]


# ----------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------
def uses_teacher_step(cfg) -> bool:
    """Whether the step needs :class:`TeacherStepMixin` (EMA, teacher or strong augmentation on)."""
    return bool(cfg.MODEL.EMA.ENABLED or cfg.TEACHER.ENABLED or cfg.INPUT.STRONG_AUG.SOURCE != "weak"
                or cfg.INPUT.STRONG_AUG.TARGET)


def check_teacher_config(cfg) -> None:
    """The MODEL.EMA / TEACHER / INPUT.STRONG_AUG combinations that cannot work, each as one clear error."""
    t = cfg.TEACHER
    ModelEMA._check_decay(cfg.MODEL.EMA.DECAY)
    if cfg.INPUT.STRONG_AUG.SOURCE not in SOURCE_VIEWS:
        raise ValueError(f"INPUT.STRONG_AUG.SOURCE must be one of {list(SOURCE_VIEWS)}, got "
                         f"{cfg.INPUT.STRONG_AUG.SOURCE!r}")
    if cfg.INPUT.STRONG_AUG.SOURCE != "weak" or cfg.INPUT.STRONG_AUG.TARGET:
        StrongAugmentation.from_config(cfg)  # validates every INPUT.STRONG_AUG value
    if cfg.INPUT.STRONG_AUG.TARGET and not t.ENABLED:
        raise ValueError("INPUT.STRONG_AUG.TARGET is the student's view of pseudo-labelled target images: it "
                         "needs TEACHER.ENABLED True (alignment always sees the weak target view)")
    if not t.ENABLED:
        return
    if not cfg.MODEL.EMA.ENABLED:
        raise ValueError("TEACHER.ENABLED needs MODEL.EMA.ENABLED True: the teacher is the EMA of the student")
    if not cfg.DATASETS.TRAIN_TARGET:
        raise ValueError("TEACHER.ENABLED needs unlabelled target images: set DATASETS.TRAIN_TARGET")
    if t.BURN_IN_ITERS < 0:
        raise ValueError(f"TEACHER.BURN_IN_ITERS must be >= 0, got {t.BURN_IN_ITERS}")
    if t.INIT not in _INITS:
        raise ValueError(f"TEACHER.INIT must be 'student' or 'ema', got {t.INIT!r}")
    if not 0.0 <= t.SCORE_THRESH <= 1.0:
        raise ValueError(f"TEACHER.SCORE_THRESH must be in [0, 1], got {t.SCORE_THRESH}")
    losses = list(t.LOSSES)
    if not losses or any(n not in DET_LOSS_NAMES for n in losses) or len(set(losses)) != len(losses):
        raise ValueError(f"TEACHER.LOSSES must name distinct losses among {list(DET_LOSS_NAMES)}, got {losses}")
    if t.LOSS_WEIGHT < 0:
        raise ValueError(f"TEACHER.LOSS_WEIGHT must be >= 0, got {t.LOSS_WEIGHT}")
    if t.MONITOR_PERIOD < 0:
        raise ValueError(f"TEACHER.MONITOR_PERIOD must be >= 0, got {t.MONITOR_PERIOD}")


@dataclass
class TeacherConfig:
    """What the teacher step reads from the config (validated by :func:`check_teacher_config`)."""

    ema: bool = False
    ema_decay: float = 0.9996
    teacher: bool = False
    burn_in: int = 0
    init: str = "student"
    score_thresh: float = 0.8
    losses: Tuple[str, ...] = ("loss_rpn_cls", "loss_cls")
    loss_weight: float = 1.0
    monitor_period: int = 20
    monitor_gt: bool = False
    target_datasets: Tuple[str, ...] = ()
    source_views: str = "weak"
    strong_target: bool = False
    strong_aug: Optional[StrongAugmentation] = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg) -> "TeacherConfig":
        check_teacher_config(cfg)
        t, s = cfg.TEACHER, cfg.INPUT.STRONG_AUG
        aug = StrongAugmentation.from_config(cfg) if (s.SOURCE != "weak" or s.TARGET) else None
        return cls(ema=bool(cfg.MODEL.EMA.ENABLED), ema_decay=float(cfg.MODEL.EMA.DECAY), teacher=bool(t.ENABLED),
                   burn_in=int(t.BURN_IN_ITERS), init=t.INIT, score_thresh=float(t.SCORE_THRESH),
                   losses=tuple(t.LOSSES), loss_weight=float(t.LOSS_WEIGHT), monitor_period=int(t.MONITOR_PERIOD),
                   monitor_gt=bool(t.MONITOR_GT), target_datasets=tuple(cfg.DATASETS.TRAIN_TARGET),
                   source_views=s.SOURCE, strong_target=bool(s.TARGET), strong_aug=aug)


# ----------------------------------------------------------------------------------------------------
# pseudo-labels and their loss
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def pseudo_label(model, inputs: List[dict], score_thresh: float,
                 autocast_ctx: Callable = contextlib.nullcontext) -> List[Instances]:
    """Detections of ``model`` (in eval mode) on ``inputs`` that score >= ``score_thresh``.

    Args:
        model: a GeneralizedRCNN (or subclass) in eval mode; its ``inference`` reads only ``x["image"]``.
        inputs: list of dicts with "image" ((3, H, W), 0-255).
        score_thresh: minimum score in [0, 1].

    Returns:
        one :class:`Instances` per image, of size (H, W) of that image's tensor (the mapped frame, not the
        original file's), on the model's device, with ``gt_boxes`` (Boxes, XYXY pixels, float32),
        ``gt_classes`` (int64, 0-based) and ``scores`` (float32): ready to be ground truth of a training
        forward. Detections went through the ROI heads' test-time score filter, per-class NMS and
        ``TEST.DETECTIONS_PER_IMAGE`` first, as in inference.
    """
    if model.training:
        raise RuntimeError("pseudo_label needs the model in eval mode (the teacher is)")
    with autocast_ctx():
        results = model.inference([{"image": x["image"]} for x in inputs], do_postprocess=False)
    out = []
    for r in results:
        keep = r.scores >= score_thresh
        inst = Instances(r.image_size)
        inst.gt_boxes = Boxes(r.pred_boxes.tensor[keep].float())
        inst.gt_classes = r.pred_classes[keep].long()
        inst.scores = r.scores[keep].float()
        out.append(inst)
    return out


class PseudoLabelLoss:
    """``p -> {loss_pseudo_<name>: weight * loss}``: the student's detection losses on pseudo-labelled images,
    evaluated at parameter values ``p`` through ``torch.func.functional_call``.

    Args:
        model: the student (training mode). Called as ``model(batch)`` -- for DomainAdaptiveRCNN without a
            target batch, i.e. plain GeneralizedRCNN detection losses.
        batch: list of {"image": (3, H, W) tensor, "instances": Instances with gt_boxes / gt_classes}.
        losses: which of detectron2's losses to keep (``TEACHER.LOSSES``); weight: their multiplier.
    """

    def __init__(self, model, batch: List[dict], losses: Sequence[str], weight: float):
        self.model, self.batch, self.losses, self.weight = model, batch, tuple(losses), float(weight)

    def __call__(self, p: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = torch.func.functional_call(self.model, p, (self.batch,))
        missing = [k for k in self.losses if k not in out]
        if missing:
            raise ValueError(f"TEACHER.LOSSES names {missing}, which the model does not return "
                             f"(it returns {sorted(out)})")
        return {pseudo_loss_name(k): self.weight * out[k] for k in self.losses}


class PseudoLabelLossEvaluator(LossEvaluator):
    """:class:`LossEvaluator` whose detection group also holds the pseudo-label losses of this step.

    ``pseudo_loss`` (a :class:`PseudoLabelLoss`, or None) is evaluated at the same ``p`` as the source
    detection losses, under its own fixed per-step seed (derived from ``seed``) and the step's autocast, so
    θ, θ' and θ ± εv see the same ROI sampling on the pseudo-labelled images too. The alignment group is
    unchanged.
    """

    def __init__(self, model, source, target, autocast_ctx=contextlib.nullcontext, seed=0, pseudo_loss=None):
        super().__init__(model, source, target, autocast_ctx, seed)
        self.pseudo_loss = pseudo_loss
        self._pseudo_seed = (int(seed) * 31 + 17) % (2**63 - 1)

    def _pseudo(self, p):
        with self.seeded(self._pseudo_seed):
            with self.autocast_ctx():
                losses = self.pseudo_loss(p)
        for k, v in losses.items():
            self.logged.setdefault(k, v.detach())
        return losses

    def det_loss(self, p):
        det = self._get(p, "det")
        if self.pseudo_loss is not None:
            det = {**det, **self._pseudo(p)}
        return self._total(det, next(iter(p.values())))


# ----------------------------------------------------------------------------------------------------
# monitoring
# ----------------------------------------------------------------------------------------------------
def count_matches(boxes_a: torch.Tensor, classes_a: torch.Tensor, boxes_b: torch.Tensor, classes_b: torch.Tensor,
                  scores_a: Optional[torch.Tensor] = None, iou_thresh: float = 0.5) -> int:
    """Number of one-to-one matches between detections ``a`` ((Na, 4) XYXY, (Na,) classes) and ``b``: greedy in
    decreasing ``scores_a`` (or given order), each ``a`` taking the unmatched ``b`` of its class with the
    highest IoU if that IoU >= ``iou_thresh`` (the AP50 matching rule)."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return 0
    iou = pairwise_iou(Boxes(boxes_a.float().cpu()), Boxes(boxes_b.float().cpu()))
    iou[classes_a.cpu()[:, None] != classes_b.cpu()[None, :]] = -1.0
    order = torch.argsort(scores_a.cpu(), descending=True).tolist() if scores_a is not None else range(len(boxes_a))
    used = torch.zeros(len(boxes_b), dtype=torch.bool)
    matched = 0
    for i in order:
        row = iou[i].masked_fill(used, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_thresh:
            used[j] = True
            matched += 1
    return matched


class TargetLabelIndex:
    """Target labels for monitoring only, read from ``DatasetCatalog`` (not from the training loader, which
    strips them) on first use, by ``file_name``; crowd regions are left out."""

    def __init__(self, dataset_names: Sequence[str]):
        self.dataset_names = list(dataset_names)
        self._index: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None

    def _build(self):
        index, labelled = {}, False
        for name in self.dataset_names:
            for d in DatasetCatalog.get(name):
                anns = d.get("annotations")
                if anns is None:
                    continue
                labelled = True
                anns = [a for a in anns if not a.get("iscrowd", 0)]
                boxes = np.array([BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                                 dtype=np.float32).reshape(-1, 4)
                classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
                index[d["file_name"]] = (boxes, classes)
        if not labelled:
            logger.warning("TEACHER.MONITOR_GT: the target datasets %s carry no labels; no precision/recall",
                           self.dataset_names)
        self._index = index

    def lookup(self, file_name: str, transforms) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(boxes (N, 4) XYXY in the mapped frame, classes (N,)) of one image, or None if it has no labels."""
        if self._index is None:
            self._build()
        entry = self._index.get(file_name)
        if entry is None:
            return None
        boxes, classes = entry
        if len(boxes) and transforms is not None:
            boxes = transforms.apply_box(boxes.copy())
        return torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4), torch.as_tensor(classes)


def _dice(matched: int, n_a: int, n_b: int) -> float:
    return 2.0 * matched / (n_a + n_b) if n_a + n_b else float("nan")


# ----------------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------------
class TeacherStepMixin:
    """Adds to a MetaAlign step trainer: strong views, the EMA (``self.ema``), the mean teacher and its
    pseudo-label losses, and the ``teacher/*`` metrics (see the module docstring).

    Constructor: the step trainer's arguments plus ``teacher_config`` (:class:`TeacherConfig`).
    """

    def __init__(self, *args, teacher_config: TeacherConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.tcfg = teacher_config
        self.ema = ModelEMA(self.model, teacher_config.ema_decay) if teacher_config.ema else None
        self._pseudo_loss: Optional[PseudoLabelLoss] = None
        self._labels = (TargetLabelIndex(teacher_config.target_datasets)
                        if teacher_config.teacher and teacher_config.monitor_gt else None)

    # -- views -----------------------------------------------------------------------------------------
    def _strong_images(self, batch: List[dict], stream: int) -> List[torch.Tensor]:
        """Strong views of a local batch; image i of rank r is image ``i * world + r`` of the global batch,
        which is where the samplers put it, so the views do not depend on the number of processes."""
        world, rank = world_size(), comm.get_rank()
        return [self.tcfg.strong_aug.seeded(d["image"], view_seed(self.seed_base, self.iter, i * world + rank, stream))
                for i, d in enumerate(batch)]

    def in_burn_in(self) -> bool:
        return self.tcfg.teacher and self.iter < self.tcfg.burn_in

    # -- the step's pieces -----------------------------------------------------------------------------
    def build_loss_evaluator(self, source, target):
        return PseudoLabelLossEvaluator(self.model, source, target, self.autocast_context, self.step_seed(),
                                        self._pseudo_loss)

    def compute_gradients(self, source, target):
        c = self.tcfg
        if c.source_views != "weak":
            strong = [dict(d, image=img) for d, img in zip(source, self._strong_images(source, SOURCE_STREAM))]
            source = strong if c.source_views == "strong" else list(source) + strong
        if self.in_burn_in():
            return self._source_only_gradients(source)
        metrics = {}
        if c.teacher:
            if self.iter == c.burn_in and c.init == "student":
                self.ema.copy_from(self.model)  # Adaptive Teacher: the teacher starts as the student
            pseudo = pseudo_label(self.ema.model, target, c.score_thresh, self.autocast_context)
            images = self._strong_images(target, TARGET_STREAM) if c.strong_target else [d["image"] for d in target]
            batch = [{"image": img, "instances": inst} for img, inst in zip(images, pseudo)]
            self._pseudo_loss = PseudoLabelLoss(self.model, batch, c.losses, c.loss_weight)
            metrics = self._monitor(target, pseudo)
        try:
            grads, stats, losses = super().compute_gradients(source, target)
        finally:
            self._pseudo_loss = None  # drop the images and pseudo-labels with the step
        stats.update(metrics)
        return grads, stats, losses

    def _source_only_gradients(self, source):
        """Burn-in: supervised source loss only -- META.MODE is 'none' for these steps (nothing to align)."""
        saved = self.options
        self.options = copy.copy(saved)
        self.options.mode = "none"
        try:
            grads, stats, losses = super().compute_gradients(source, None)
        finally:
            self.options = saved
        stats["teacher/burn_in"] = 1.0
        return grads, stats, losses

    def optimizer_step(self):
        super().optimizer_step()
        if self.ema is not None:
            self.ema.update(self.model)

    # -- monitoring ------------------------------------------------------------------------------------
    def _monitor(self, target, pseudo) -> Dict[str, Union[float, torch.Tensor]]:
        # Values the step has on the host already stay floats (the counts: the pseudo-labels' selection read
        # them); the mean score stays a device tensor, read with the step's other metrics on a log step
        # (MetaAlignSimpleTrainer.flush_metrics). The label audit and the agreement need host reads.
        counts = [len(p) for p in pseudo]
        m: Dict[str, Union[float, torch.Tensor]] = {
            "teacher/pseudo_per_image": float(np.mean(counts)) if counts else 0.0}
        if sum(counts):
            m["teacher/pseudo_score"] = torch.cat([p.scores for p in pseudo]).mean()
        if self._labels is not None:
            tp = n_gt = 0
            n_pred = 0
            for d, p in zip(target, pseudo):
                gt = self._labels.lookup(d["file_name"], d.get("transforms"))
                if gt is None:
                    continue
                n_pred += len(p)
                n_gt += len(gt[0])
                tp += count_matches(p.gt_boxes.tensor, p.gt_classes, gt[0], gt[1], p.scores)
            m["teacher/pseudo_precision"] = tp / n_pred if n_pred else float("nan")
            m["teacher/pseudo_recall"] = tp / n_gt if n_gt else float("nan")
        period = self.tcfg.monitor_period
        if period > 0 and self.iter % period == 0:
            was_training = self.model.training
            self.model.eval()
            try:
                student = pseudo_label(self.model, target, self.tcfg.score_thresh, self.autocast_context)
            finally:
                self.model.train(was_training)
            matched = sum(count_matches(p.gt_boxes.tensor, p.gt_classes, s.gt_boxes.tensor, s.gt_classes, p.scores)
                          for p, s in zip(pseudo, student))
            m["teacher/agreement"] = _dice(matched, sum(counts), sum(len(s) for s in student))
        return m


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
