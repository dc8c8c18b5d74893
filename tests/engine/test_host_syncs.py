"""Host-device synchronisations of one training step, counted on CPU with a tiny detector.

Every Python-level read of a tensor value (``.item()``, ``float()``, ``bool()``, ``.tolist()``, ...) would
stall the host on a GPU. The step trainer's own reads (outside the model's forward) are pinned here: two per
step that is not a logging step -- the finite flag of gradients and losses (one device-side reduction,
before the update) and the weight norms before/after the update (after it) -- plus one on a logging step.
The model's own reads (detectron2's RPN/ROI heads) are counted apart and not asserted; so are, in teacher-student
mode, the teacher's inference, the selection of its pseudo-labels and the strong views' random draws.

Before this was tested, a step made 14 (joint), 15 (first order) and 18 (second order) such reads.
"""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from metaalign_det.data.augmentation import TARGET_STREAM, StrongAugmentation, add_strong_views
from metaalign_det.engine import loss_evaluator, teacher
from metaalign_det.engine.teacher import TeacherConfig, TeacherSimpleTrainer
from metaalign_det.engine.train_loop import MetaAlignSimpleTrainer, MetaAlignStepOptions
from metaalign_det.utils.host_sync import HostSyncCounter
from tests.helpers.configs import enable_da, make_inputs, tiny_fpn_cfg

STEP_SYNCS = 2  # finite flag (before the update) + weight norms (after it)
LOG_SYNCS = 1  # a logging step reads every pending step's metrics in one copy


class _Repeat:
    def __init__(self, pair):
        self.pair = pair

    def __iter__(self):
        while True:
            yield self.pair


def _step_trainer(mode, log_period, cos_period=0, lr=0.001, seed=0):
    torch.manual_seed(seed)
    cfg = enable_da(tiny_fpn_cfg())
    cfg.SOLVER.BASE_LR = lr
    model = build_model(cfg).train()
    source, target = make_inputs(64, 96, n_source=2, n_target=2)
    trainer = MetaAlignSimpleTrainer(model, _Repeat((source, target)), build_optimizer(cfg, model),
                                     MetaAlignStepOptions(mode=mode, joint_grad_cos_period=cos_period), seed=1)
    trainer.log_period = log_period
    return trainer


def _count_steps(trainer, iters, counted, monkeypatch, scoped=()):
    """Run iterations 0..iters-1; count the reads of the iterations in ``counted``. The model's forward is
    counted as "model"; ``scoped``: more (owner, attribute, scope) callables counted apart."""
    scoped = [(loss_evaluator.LossEvaluator, "_forward", "model"), *scoped]
    originals = [getattr(owner, name) for owner, name, _ in scoped]
    counts = {}
    with EventStorage(0) as storage:
        for i in range(iters):
            trainer.iter = storage.iter = i
            if i not in counted:
                trainer.run_step()
            else:
                counter = HostSyncCounter()
                for (owner, name, scope), original in zip(scoped, originals):

                    def wrapped(*args, counter=counter, scope=scope, original=original, **kwargs):
                        with counter.scope(scope):
                            return original(*args, **kwargs)

                    monkeypatch.setattr(owner, name, wrapped)
                with counter:
                    trainer.run_step()
                for (owner, name, _), original in zip(scoped, originals):
                    monkeypatch.setattr(owner, name, original)
                counts[i] = counter
            storage.step()
    return counts, storage


@pytest.mark.parametrize("mode,cos_period", [("none", 0), ("none", 1), ("first_order", 0),
                                             ("second_order", 0)])
def test_step_reads_two_values_groups_and_logging_one_more(mode, cos_period, monkeypatch):
    # iteration 0 is a warm-up (second order: the auto HVP's fallback); 1 is a plain step, 3 a logging step
    trainer = _step_trainer(mode, log_period=4, cos_period=cos_period)
    counts, storage = _count_steps(trainer, 4, {1, 3}, monkeypatch)
    plain, logging_step = counts[1], counts[3]
    sites = [s for s in plain.sites if s[0] == "step"]
    assert plain.counts["step"] <= STEP_SYNCS, sites
    assert logging_step.counts["step"] <= STEP_SYNCS + LOG_SYNCS, logging_step.sites
    assert plain.counts["model"] > 0  # the counter does see the model's own reads (not ours to remove)
    # the deferred metrics of all four iterations reached the storage under their own iterations
    history = storage.history("loss_cls").values()
    assert [it for _, it in history] == [0, 1, 2, 3]
    assert [it for _, it in storage.history("meta/inner_lr").values()] == [0, 1, 2, 3]
    # theta' (second order: and the HVP vector) live in buffers kept across steps, one parameter set each
    param_bytes = sum(p.numel() * p.element_size() for p in trainer.params.values())
    sets = {"none": 0, "first_order": 1, "second_order": 2}[mode]
    assert trainer._step_buffers.nbytes() == sets * param_bytes


def test_deferred_metrics_equal_per_step_metrics():
    """log_period 3 puts the same values under the same iterations as writing every step."""
    series = []
    for period in (1, 3):
        trainer = _step_trainer("first_order", log_period=period)
        with EventStorage(0) as storage:
            for i in range(3):
                trainer.iter = storage.iter = i
                trainer.run_step()
                storage.step()
        series.append({k: storage.history(k).values() for k in storage.histories()})
    assert series[0].keys() == series[1].keys() and "meta/grad_cos" in series[0]
    for k in series[0]:
        assert [it for _, it in series[0][k]] == [it for _, it in series[1][k]], k
        if k != "data_time":  # wall time, differs run to run
            assert [v for v, _ in series[0][k]] == [v for v, _ in series[1][k]], k


def test_non_finite_loss_with_finite_gradients_stops_before_the_update():
    trainer = _step_trainer("first_order", log_period=20)
    original = trainer.compute_gradients

    def poisoned(source, target):
        grads, stats, losses = original(source, target)
        losses["loss_da_img"] = losses["loss_da_img"] * float("inf")
        from metaalign_det.meta.grad_stats import finite_flag
        stats["losses_finite"] = finite_flag(list(losses.values()))
        return grads, stats, losses

    trainer.compute_gradients = poisoned
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with EventStorage(0), pytest.raises(FloatingPointError, match="Loss became infinite or NaN at iteration 0"):
        trainer.run_step()
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_weight_norm_is_remembered_until_a_weight_changes():
    """The norm before an update is the one after the previous update, unless a weight changed in place."""
    trainer = _step_trainer("none", log_period=1)
    first = trainer.weight_norm_tensor()
    assert trainer.weight_norm_tensor() is first  # no weight changed: not recomputed
    weight = next(iter(trainer.params.values()))
    with torch.no_grad():
        weight.mul_(3.0)  # an in-place change (a hook, a loaded checkpoint) bumps the version counter
    changed = trainer.weight_norm_tensor()
    exact = torch.linalg.vector_norm(torch.cat([p.detach().double().reshape(-1) for p in trainer.params.values()]))
    assert changed is not first and float(changed) == pytest.approx(float(exact), rel=1e-12)
    assert float(changed) > float(first)


def test_the_teacher_step_reads_nothing_more_outside_the_teacher(monkeypatch):
    """Teacher-student on top of first order (engine/teacher.py). The teacher's inference and the selection of
    its detections above the threshold (a count per image) need host reads: those are counted apart
    ("teacher"), like the model's own reads (the strong views come with the batch, built by the loader).
    What the teacher step adds around them -- the pseudo-label losses in the detection group, the teacher/*
    metrics, the EMA update -- reads nothing: still two reads per step, three on a logging step. (The
    monitoring's agreement and label audit, TEACHER.MONITOR_PERIOD / MONITOR_GT, also read on the host; they
    are off here.)"""
    torch.manual_seed(0)
    cfg = enable_da(tiny_fpn_cfg())
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # a random-init teacher: every image gets pseudo-labels
    cfg.TEST.DETECTIONS_PER_IMAGE = 4
    model = build_model(cfg).train()
    source, target = make_inputs(64, 96, n_source=2, n_target=2)
    target = add_strong_views(target, StrongAugmentation(), 1, 0, TARGET_STREAM)  # what the paired loader adds
    tcfg = TeacherConfig(ema=True, ema_decay=0.5, teacher=True, score_thresh=0.0, monitor_period=0,
                         strong_target=True, strong_aug=StrongAugmentation())
    trainer = TeacherSimpleTrainer(model, _Repeat((source, target)), build_optimizer(cfg, model),
                                   MetaAlignStepOptions(mode="first_order"), seed=1, teacher_config=tcfg)
    trainer.log_period = 4
    scoped = [(teacher, "pseudo_label", "teacher"), (teacher.TeacherStepMixin, "_strong_images", "teacher"),
              (teacher.PseudoLabelLoss, "__call__", "model")]  # the student's forward on the pseudo-labels
    counts, storage = _count_steps(trainer, 4, {1, 3}, monkeypatch, scoped)
    plain, logging_step = counts[1], counts[3]
    assert plain.counts["step"] <= STEP_SYNCS, [s for s in plain.sites if s[0] == "step"]
    assert logging_step.counts["step"] <= STEP_SYNCS + LOG_SYNCS, [s for s in logging_step.sites if s[0] == "step"]
    assert plain.counts["teacher"] > 0 and plain.counts["model"] > 0  # the counter does see them
    for k in ("teacher/pseudo_per_image", "teacher/pseudo_score", "loss_pseudo_cls", "loss_da_img"):
        assert [it for _, it in storage.history(k).values()] == [0, 1, 2, 3], k
    assert trainer.ema.updates == 4
