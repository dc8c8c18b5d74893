"""The option records of the project's own config groups, one home for each group's defaults and rules:

* :class:`MetaOptions`    -- ``META.*`` (the MetaAlign step);
* :class:`TeacherOptions` -- ``TEACHER.*`` (the mean teacher; combinations with MODEL.EMA / INPUT.STRONG_AUG are
  checked where the step is built, engine/teacher_config.py);
* :class:`EvalOptions`    -- ``TEST.AP_METRIC / AP_IOU / AP_COCO`` (the project's evaluator).

Each is a frozen dataclass: its field defaults are the config's defaults (config.py fills the keys from them),
its constructor validates every value with one error naming the key, and ``from_config(cfg)`` reads the group.
This module sits in the lowest layer (config.py imports it), so it imports nothing of the package: the values
a key may take are written here, and tests/foundation/test_options.py pins that they are exactly what the code
behind them implements (the meta step's directions and HVP modes, the AP conventions of evaluation/ap.py).
"""
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Tuple

__all__ = ["META_MODES", "META_DIRECTIONS", "META_HVP", "AP_METRICS", "DET_LOSS_NAMES", "TEACHER_INITS",
           "MetaOptions", "TeacherOptions", "EvalOptions"]

# META.MODE -> the meta step's order ("none" = the joint DA step)
META_MODES = {"none": "none", "first_order": "first", "second_order": "second"}
# the meta step's two directions, plus "alternate" (resolved per iteration: det_first on even, align_first on odd)
META_DIRECTIONS = ("align_first", "det_first", "alternate")
# the meta step's Hessian-vector product modes (second order)
META_HVP = ("auto", "double_backward", "finite_difference")
# the AP conventions evaluation/ap.py implements
AP_METRICS = ("coco101", "voc07", "voc12")
# detectron2's Faster R-CNN training losses (what TEACHER.LOSSES may name)
DET_LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")
# the teacher at the end of burn-in: a copy of the student (Adaptive Teacher) or the EMA kept through burn-in
TEACHER_INITS = ("student", "ema")


def _real(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return int(value)


def _choice(value: Any, allowed, key: str) -> str:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(str(a) for a in allowed)}, got {value!r}")
    return value


def _set(obj, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclass: normalised values are set once, in __post_init__


@dataclass(frozen=True)
class MetaOptions:
    """``META.*``: what the training step needs (config.py documents each key)."""

    mode: str = "none"
    direction: str = "align_first"
    inner_lr_scale: float = 10.0
    params: Tuple[str, ...] = ()
    hvp: str = "auto"
    fd_eps: float = 1e-3
    joint_grad_cos_period: int = 20

    def __post_init__(self) -> None:
        _choice(self.mode, tuple(META_MODES), "META.MODE")
        _choice(self.direction, META_DIRECTIONS, "META.DIRECTION")
        _choice(self.hvp, META_HVP, "META.HVP")
        _set(self, "inner_lr_scale", _real(self.inner_lr_scale, "META.INNER_LR_SCALE"))
        if self.inner_lr_scale < 0:
            raise ValueError(f"META.INNER_LR_SCALE must be >= 0, got {self.inner_lr_scale}")
        _set(self, "fd_eps", _real(self.fd_eps, "META.FD_EPS"))
        if self.fd_eps <= 0:
            raise ValueError(f"META.FD_EPS must be > 0, got {self.fd_eps}")
        period = _int(self.joint_grad_cos_period, "META.JOINT_GRAD_COS_PERIOD")
        if period < 0:
            raise ValueError(f"META.JOINT_GRAD_COS_PERIOD must be >= 0, got {period}")
        _set(self, "joint_grad_cos_period", period)
        if isinstance(self.params, str) or not all(isinstance(p, str) for p in self.params):
            raise ValueError(f"META.PARAMS must be a list of regexes over parameter names, got {self.params!r}")
        _set(self, "params", tuple(self.params))

    @property
    def order(self) -> str:
        """The meta step's ``order`` for this mode ("none", "first", "second")."""
        return META_MODES[self.mode]

    @classmethod
    def from_config(cls, cfg) -> "MetaOptions":
        m = cfg.META
        return cls(mode=m.MODE, direction=m.DIRECTION, inner_lr_scale=m.INNER_LR_SCALE, params=tuple(m.PARAMS),
                   hvp=m.HVP, fd_eps=m.FD_EPS, joint_grad_cos_period=m.JOINT_GRAD_COS_PERIOD)


@dataclass(frozen=True)
class TeacherOptions:
    """``TEACHER.*``: the mean teacher's own keys (config.py documents each)."""

    enabled: bool = False
    burn_in_iters: int = 0
    init: str = "student"
    score_thresh: float = 0.8
    losses: Tuple[str, ...] = ("loss_rpn_cls", "loss_cls")
    loss_weight: float = 1.0
    monitor_period: int = 20
    monitor_gt: bool = False

    def __post_init__(self) -> None:
        _set(self, "enabled", bool(self.enabled))
        _set(self, "monitor_gt", bool(self.monitor_gt))
        burn_in = _int(self.burn_in_iters, "TEACHER.BURN_IN_ITERS")
        if burn_in < 0:
            raise ValueError(f"TEACHER.BURN_IN_ITERS must be >= 0, got {burn_in}")
        _set(self, "burn_in_iters", burn_in)
        _choice(self.init, TEACHER_INITS, "TEACHER.INIT")
        thresh = _real(self.score_thresh, "TEACHER.SCORE_THRESH")
        if not 0.0 <= thresh <= 1.0:
            raise ValueError(f"TEACHER.SCORE_THRESH must be in [0, 1], got {thresh}")
        _set(self, "score_thresh", thresh)
        losses = list(self.losses) if not isinstance(self.losses, str) else [self.losses]
        if not losses or any(n not in DET_LOSS_NAMES for n in losses) or len(set(losses)) != len(losses):
            raise ValueError(f"TEACHER.LOSSES must name distinct losses among {list(DET_LOSS_NAMES)}, got {losses}")
        _set(self, "losses", tuple(losses))
        weight = _real(self.loss_weight, "TEACHER.LOSS_WEIGHT")
        if weight < 0:
            raise ValueError(f"TEACHER.LOSS_WEIGHT must be >= 0, got {weight}")
        _set(self, "loss_weight", weight)
        period = _int(self.monitor_period, "TEACHER.MONITOR_PERIOD")
        if period < 0:
            raise ValueError(f"TEACHER.MONITOR_PERIOD must be >= 0, got {period}")
        _set(self, "monitor_period", period)

    @classmethod
    def from_config(cls, cfg) -> "TeacherOptions":
        t = cfg.TEACHER
        return cls(enabled=t.ENABLED, burn_in_iters=t.BURN_IN_ITERS, init=t.INIT, score_thresh=t.SCORE_THRESH,
                   losses=tuple(t.LOSSES), loss_weight=t.LOSS_WEIGHT, monitor_period=t.MONITOR_PERIOD,
                   monitor_gt=t.MONITOR_GT)


@dataclass(frozen=True)
class EvalOptions:
    """``TEST.AP_METRIC / AP_IOU / AP_COCO``: the AP convention of the project's evaluator."""

    ap_metric: str = "coco101"
    ap_iou: float = 0.5
    ap_coco: bool = False

    def __post_init__(self) -> None:
        _choice(self.ap_metric, AP_METRICS, "TEST.AP_METRIC")
        iou = _real(self.ap_iou, "TEST.AP_IOU")
        if not 0.0 < iou <= 1.0:
            raise ValueError(f"TEST.AP_IOU must be in (0, 1], got {iou}")
        _set(self, "ap_iou", iou)
        _set(self, "ap_coco", bool(self.ap_coco))

    @classmethod
    def from_config(cls, cfg) -> "EvalOptions":
        """Reads ``cfg.TEST``; a key a plain detectron2 config lacks takes this record's default."""
        test = cfg.TEST
        default = {f.name: f.default for f in fields(cls)}
        return cls(ap_metric=test.get("AP_METRIC", default["ap_metric"]),
                   ap_iou=test.get("AP_IOU", default["ap_iou"]),
                   ap_coco=test.get("AP_COCO", default["ap_coco"]))
