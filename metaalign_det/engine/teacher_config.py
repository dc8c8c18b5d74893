"""What the teacher-student step reads from the config -- MODEL.EMA, TEACHER.*, INPUT.STRONG_AUG.* -- validated in
one place (one clear error per bad key or impossible combination) and held in :class:`TeacherConfig`.
docs/teacher.md documents the keys."""
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..data.augmentation import StrongAugmentation
from ..options import DET_LOSS_NAMES, TeacherOptions
from .ema import ModelEMA

__all__ = ["DET_LOSS_NAMES", "SOURCE_VIEWS", "TeacherConfig", "check_teacher_config", "uses_teacher_step"]

SOURCE_VIEWS = ("weak", "strong", "both")
_T = TeacherOptions()  # the TEACHER.* defaults


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
    # what the teacher needs from the other groups
    if not cfg.MODEL.EMA.ENABLED:
        raise ValueError("TEACHER.ENABLED needs MODEL.EMA.ENABLED True: the teacher is the EMA of the student")
    if not cfg.DATASETS.TRAIN_TARGET:
        raise ValueError("TEACHER.ENABLED needs unlabelled target images: set DATASETS.TRAIN_TARGET")
    TeacherOptions.from_config(cfg)  # every TEACHER.* value on its own (options.py)


@dataclass
class TeacherConfig:
    """What the teacher step reads from the config (validated by :func:`check_teacher_config`)."""

    ema: bool = False
    ema_decay: float = 0.9996
    teacher: bool = _T.enabled
    burn_in: int = _T.burn_in_iters
    init: str = _T.init
    score_thresh: float = _T.score_thresh
    losses: Tuple[str, ...] = _T.losses
    loss_weight: float = _T.loss_weight
    monitor_period: int = _T.monitor_period
    monitor_gt: bool = _T.monitor_gt
    target_datasets: Tuple[str, ...] = ()
    source_views: str = "weak"
    strong_target: bool = False
    strong_aug: Optional[StrongAugmentation] = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg) -> "TeacherConfig":
        check_teacher_config(cfg)
        t, s = TeacherOptions.from_config(cfg), cfg.INPUT.STRONG_AUG
        aug = StrongAugmentation.from_config(cfg) if (s.SOURCE != "weak" or s.TARGET) else None
        return cls(ema=bool(cfg.MODEL.EMA.ENABLED), ema_decay=float(cfg.MODEL.EMA.DECAY), teacher=t.enabled,
                   burn_in=t.burn_in_iters, init=t.init, score_thresh=t.score_thresh, losses=t.losses,
                   loss_weight=t.loss_weight, monitor_period=t.monitor_period, monitor_gt=t.monitor_gt,
                   target_datasets=tuple(cfg.DATASETS.TRAIN_TARGET), source_views=s.SOURCE,
                   strong_target=bool(s.TARGET), strong_aug=aug)
