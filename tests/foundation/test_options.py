"""metaalign_det/options.py: the one home of the META / TEACHER / TEST.AP_* defaults and rules.

The config's defaults are the records' defaults; the values a key may take are exactly those the code behind it
implements (the meta step, the AP conventions); every bad value is one ValueError naming the key."""
import dataclasses

import pytest
from detectron2.config import get_cfg

import metaalign_det.meta as meta
from metaalign_det.config import add_metaalign_config
from metaalign_det.evaluation import METRICS
from metaalign_det.options import (
    AP_METRICS,
    META_DIRECTIONS,
    META_HVP,
    META_MODES,
    EvalOptions,
    MetaOptions,
    TeacherOptions,
)


def _cfg():
    return add_metaalign_config(get_cfg())


def test_config_defaults_are_the_records_defaults():
    cfg = _cfg()
    assert MetaOptions.from_config(cfg) == MetaOptions()
    assert TeacherOptions.from_config(cfg) == TeacherOptions()
    assert EvalOptions.from_config(cfg) == EvalOptions()
    # and a changed key reaches the record
    cfg.META.MODE, cfg.TEACHER.SCORE_THRESH, cfg.TEST.AP_METRIC = "second_order", 0.5, "voc07"
    assert MetaOptions.from_config(cfg).mode == "second_order"
    assert TeacherOptions.from_config(cfg).score_thresh == 0.5
    assert EvalOptions.from_config(cfg).ap_metric == "voc07"


def test_allowed_values_are_what_the_code_implements():
    assert set(META_DIRECTIONS) == set(meta.DIRECTIONS) | {"alternate"}
    assert tuple(META_HVP) == tuple(meta.HVP_MODES)
    assert set(META_MODES.values()) == set(meta.ORDERS)
    assert tuple(AP_METRICS) == tuple(METRICS)
    for mode in META_MODES:
        for direction in META_DIRECTIONS:
            for hvp in META_HVP:
                opts = MetaOptions(mode=mode, direction=direction, hvp=hvp)
                assert opts.order == META_MODES[mode]
    for metric in AP_METRICS:
        assert EvalOptions(ap_metric=metric).ap_metric == metric


def test_a_plain_detectron2_config_gets_the_eval_defaults():
    # build_evaluator accepts a config without the project's keys
    assert EvalOptions.from_config(get_cfg()) == EvalOptions()


@pytest.mark.parametrize("record,kwargs,key", [
    (MetaOptions, {"mode": "third_order"}, "META.MODE"),
    (MetaOptions, {"direction": "both"}, "META.DIRECTION"),
    (MetaOptions, {"hvp": "exact"}, "META.HVP"),
    (MetaOptions, {"inner_lr_scale": -1.0}, "META.INNER_LR_SCALE"),
    (MetaOptions, {"inner_lr_scale": float("nan")}, "META.INNER_LR_SCALE"),
    (MetaOptions, {"fd_eps": 0.0}, "META.FD_EPS"),
    (MetaOptions, {"joint_grad_cos_period": -1}, "META.JOINT_GRAD_COS_PERIOD"),
    (MetaOptions, {"joint_grad_cos_period": 2.5}, "META.JOINT_GRAD_COS_PERIOD"),
    (MetaOptions, {"params": "backbone.*"}, "META.PARAMS"),
    (TeacherOptions, {"burn_in_iters": -1}, "TEACHER.BURN_IN_ITERS"),
    (TeacherOptions, {"init": "random"}, "TEACHER.INIT"),
    (TeacherOptions, {"score_thresh": 1.5}, "TEACHER.SCORE_THRESH"),
    (TeacherOptions, {"losses": ()}, "TEACHER.LOSSES"),
    (TeacherOptions, {"losses": ("loss_cls", "loss_cls")}, "TEACHER.LOSSES"),
    (TeacherOptions, {"losses": ("loss_mask",)}, "TEACHER.LOSSES"),
    (TeacherOptions, {"loss_weight": -0.1}, "TEACHER.LOSS_WEIGHT"),
    (TeacherOptions, {"monitor_period": -5}, "TEACHER.MONITOR_PERIOD"),
    (EvalOptions, {"ap_metric": "voc10"}, "TEST.AP_METRIC"),
    (EvalOptions, {"ap_iou": 0.0}, "TEST.AP_IOU"),
    (EvalOptions, {"ap_iou": 1.01}, "TEST.AP_IOU"),
])
def test_bad_values_name_their_key(record, kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        record(**kwargs)


def test_records_are_frozen_and_normalised():
    opts = MetaOptions(params=["backbone"], inner_lr_scale=1)
    assert opts.params == ("backbone",) and isinstance(opts.inner_lr_scale, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.mode = "first_order"
    # the teacher's burn-in steps run the joint step through a replaced record, the original untouched
    assert dataclasses.replace(opts, mode="none").mode == "none" and opts.mode == "none"
    assert dataclasses.replace(MetaOptions(mode="first_order"), mode="none").order == "none"
