"""Mean teacher: pseudo-labels (no gradient, thresholded), the pseudo-label loss in the detection group of every
META.MODE and direction, burn-in, monitoring, the target-label audit and kill-and-resume in the teacher phase."""
import json
import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from metaalign_det.engine import MetaAlignTrainer
from metaalign_det.engine.loss_evaluator import LossEvaluator
from metaalign_det.engine.teacher import (
    PseudoLabelLoss,
    PseudoLabelLossEvaluator,
    count_matches,
    pseudo_label,
)
from tests.d2_newer_api import simulate_newer_detectron2
from tests.helpers.configs import enable_da, make_inputs, quick_cfg, tiny_fpn_cfg
from tests.helpers.training import build_trainer, one_step, train
from tests.modeling.test_meta_arch import _KeyAuditDict

# a random-init teacher scores ~1/3: threshold 0 and a fixed detection count give every image pseudo-labels
LABEL_EVERYTHING = ["TEACHER.SCORE_THRESH", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                    "TEST.DETECTIONS_PER_IMAGE", "4"]
TEACHER = ["TEACHER.ENABLED", "True", "MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", "0.5",
           "INPUT.STRONG_AUG.SOURCE", "strong", "INPUT.STRONG_AUG.TARGET", "True", "META.JOINT_GRAD_COS_PERIOD", "0",
           *LABEL_EVERYTHING]


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _teacher_cfg(tmp_path, out, *opts):
    return quick_cfg(tmp_path / "data", tmp_path / out, *TEACHER, *opts)


# ---- pseudo-labels -------------------------------------------------------------------------------------
def test_pseudo_labels_are_the_teachers_detections_above_the_threshold_without_gradient():
    cfg = enable_da(tiny_fpn_cfg())
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _, target = make_inputs(n_target=2)
    every = pseudo_label(model, target, 0.0)
    kept = pseudo_label(model, target, 0.34)
    for t, a, k in zip(target, every, kept):
        assert k.image_size == tuple(t["image"].shape[-2:])  # the mapped frame (the tensor), not height/width
        assert len(a) > 0 and 0 < len(k) < len(a)
        assert bool((k.scores >= 0.34).all())
        sel = a.scores >= 0.34  # exactly the detections above the threshold, nothing else
        assert torch.equal(k.gt_boxes.tensor, a.gt_boxes.tensor[sel]) and torch.equal(k.gt_classes, a.gt_classes[sel])
        assert not k.gt_boxes.tensor.requires_grad and not k.scores.requires_grad
        assert k.gt_classes.dtype == torch.int64 and k.gt_boxes.tensor.dtype == torch.float32
    with pytest.raises(RuntimeError, match="eval mode"):
        pseudo_label(model.train(), target, 0.5)


def test_pseudo_loss_joins_the_detection_group_only():
    cfg = enable_da(tiny_fpn_cfg())
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    teacher = build_model(cfg).eval()
    source, target = make_inputs(n_target=2)
    pseudo = pseudo_label(teacher, target, 0.0)
    batch = [{"image": t["image"], "instances": p} for t, p in zip(target, pseudo)]
    loss = PseudoLabelLoss(model, batch, ("loss_rpn_cls", "loss_cls"), 2.0)
    p = {n: q for n, q in model.named_parameters() if q.requires_grad}
    with EventStorage():
        plain = LossEvaluator(model, source, target, seed=3)
        ours = PseudoLabelLossEvaluator(model, source, target, seed=3, pseudo_loss=loss)
        d0, d1 = plain.det_loss(p), ours.det_loss(p)
        a0, a1 = plain.align_loss(p), ours.align_loss(p)
    assert set(ours.logged) - set(plain.logged) == {"loss_pseudo_rpn_cls", "loss_pseudo_cls"}
    pseudo_sum = ours.logged["loss_pseudo_rpn_cls"] + ours.logged["loss_pseudo_cls"]
    assert pseudo_sum > 0
    torch.testing.assert_close(d1.detach(), d0.detach() + pseudo_sum)
    torch.testing.assert_close(a1.detach(), a0.detach())  # the alignment group does not see them
    torch.manual_seed(ours._pseudo_seed)  # the same ROI sampling as the evaluator's pseudo-label pass
    with EventStorage():
        raw = model(batch)  # the weight multiplies detectron2's own losses
    torch.testing.assert_close(ours.logged["loss_pseudo_cls"], 2.0 * raw["loss_cls"].detach())


def test_count_matches_is_one_to_one_class_aware_and_by_score():
    a = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30.]])
    b = torch.tensor([[0, 0, 10, 11], [20, 20, 30, 30.]])
    assert count_matches(a, torch.tensor([0, 0, 1]), b, torch.tensor([0, 1]), torch.tensor([0.9, 0.8, 0.7])) == 2
    assert count_matches(a, torch.tensor([0, 0, 2]), b, torch.tensor([0, 1])) == 1  # class must agree
    assert count_matches(a[:0], torch.tensor([], dtype=torch.long), b, torch.tensor([0, 1])) == 0


# ---- the step ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,direction", [
    ("none", "align_first"), ("first_order", "align_first"), ("first_order", "det_first"),
    ("second_order", "align_first"), ("second_order", "det_first"),
])
def test_every_meta_mode_and_direction_trains_with_the_teacher(tmp_path, mode, direction):
    cfg = _teacher_cfg(tmp_path, "out", "META.MODE", mode, "META.DIRECTION", direction)
    trainer = build_trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    storage = one_step(trainer)
    latest = {k: v[0] for k, v in storage.latest().items()}
    for k in ("loss_pseudo_rpn_cls", "loss_pseudo_cls", "loss_cls", "loss_da_img", "loss_da_ins"):
        assert k in latest and torch.isfinite(torch.tensor(latest[k])), (k, latest.get(k))
    assert latest["teacher/pseudo_per_image"] == 4.0
    if mode != "none":
        assert latest["meta/direction_is_align_first"] == float(direction == "align_first")
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(before[k], v)]
    assert len(moved) > 10
    ema = trainer.step_trainer.ema.model
    assert all(p.grad is None and not p.requires_grad for p in ema.parameters())  # never a gradient


def test_pseudo_loss_weight_zero_is_the_run_without_teacher(tmp_path):
    """The pseudo-label term is the only difference: weight 0 reproduces the teacher-less run exactly, a
    positive weight changes the update."""
    base = ["MODEL.EMA.ENABLED", "True", "INPUT.STRONG_AUG.SOURCE", "strong", "SOLVER.MAX_ITER", "1",
            "META.JOINT_GRAD_COS_PERIOD", "0", "META.MODE", "first_order"]
    runs = {}
    variants = {"plain": [],
                "w0": ["TEACHER.ENABLED", "True", "TEACHER.LOSS_WEIGHT", "0.0", "INPUT.STRONG_AUG.TARGET", "True",
                       *LABEL_EVERYTHING],
                "w1": ["TEACHER.ENABLED", "True", "INPUT.STRONG_AUG.TARGET", "True", *LABEL_EVERYTHING]}
    for name, extra in variants.items():
        runs[name] = train(quick_cfg(tmp_path / "data", tmp_path / name, *base, *extra)).model.state_dict()
    assert all(torch.equal(runs["plain"][k], v) for k, v in runs["w0"].items())
    assert any(not torch.equal(runs["plain"][k], v) for k, v in runs["w1"].items())


def test_burn_in_is_source_only_then_the_teacher_starts_as_the_student(tmp_path):
    cfg = _teacher_cfg(tmp_path, "out", "TEACHER.BURN_IN_ITERS", "2", "SOLVER.MAX_ITER", "3",
                       "META.MODE", "first_order", "TEACHER.MONITOR_PERIOD", "1", "TEACHER.MONITOR_GT", "True")
    train(cfg)
    rows = {r["iteration"]: r for r in _metrics(tmp_path / "out") if "loss_cls" in r}
    for it in (0, 1):  # burn-in: supervised source loss only
        assert rows[it]["teacher/burn_in"] == 1.0
        assert not any(k.startswith(("loss_pseudo_", "loss_da_", "teacher/pseudo")) for k in rows[it]), rows[it]
    r = rows[2]
    assert "teacher/burn_in" not in r and r["loss_pseudo_cls"] > 0 and "loss_da_img" in r
    assert r["teacher/agreement"] == 1.0  # the teacher was just copied from the student
    assert 0.0 <= r["teacher/pseudo_precision"] <= 1.0 and 0.0 <= r["teacher/pseudo_recall"] <= 1.0
    assert 0.0 <= r["teacher/pseudo_score"] <= 1.0


def test_teacher_metrics_are_deferred_to_log_steps_under_their_own_iterations(tmp_path):
    """The teacher step trainer gets SOLVER.LOG_PERIOD like the others: its teacher/* metrics wait on the device
    (or the host) until a log step or the last iteration, then reach the storage under their own iterations."""
    cfg = _teacher_cfg(tmp_path, "out", "SOLVER.LOG_PERIOD", "2", "SOLVER.MAX_ITER", "3", "META.MODE", "first_order",
                       "TEACHER.MONITOR_PERIOD", "1", "TEACHER.MONITOR_GT", "True")
    step = build_trainer(cfg).step_trainer
    assert (step.log_period, step.max_iter) == (2, 3)
    keys = ("teacher/pseudo_per_image", "teacher/pseudo_score", "teacher/agreement", "teacher/pseudo_precision",
            "teacher/pseudo_recall", "loss_pseudo_cls")
    seen = []
    with EventStorage(0) as storage:
        for i in range(3):
            step.iter = storage.iter = i
            step.run_step()
            seen.append({k: [it for _, it in storage.history(k).values()] for k in keys if k in storage.histories()})
            storage.step()
    assert seen[0] == {}  # iteration 0 is not a log step: nothing read yet
    assert seen[1] == {k: [0, 1] for k in keys}  # log step ((1 + 1) % 2 == 0): iterations 0 and 1
    assert seen[2] == {k: [0, 1, 2] for k in keys}  # the last iteration
    values = {k: [v for v, _ in storage.history(k).values()] for k in keys}
    assert values["teacher/pseudo_per_image"] == [4.0, 4.0, 4.0]
    assert all(0.0 <= v <= 1.0 for k in keys[1:5] for v in values[k]), values


@pytest.mark.parametrize("views", ["strong", "both"])
def test_source_views(tmp_path, views):
    """"strong": the supervised loss sees the strong view of each source image; "both": weak + strong copies."""
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "MODEL.EMA.ENABLED", "True", "INPUT.STRONG_AUG.SOURCE", views)
    trainer = build_trainer(cfg)
    step = trainer.step_trainer
    seen = []
    original = step.build_loss_evaluator
    step.build_loss_evaluator = lambda source, target, *a: seen.append((source, target)) or original(source, target, *a)
    one_step(trainer)
    (source, target), = seen
    weak = [d["image"] for d in target]  # the target keeps the mapper's (weak) view for alignment
    assert len(target) == 2 and all(t.dtype == torch.uint8 for t in weak)
    assert len(source) == (2 if views == "strong" else 4)
    if views == "both":
        for w, s in zip(source[:2], source[2:]):
            assert w["file_name"] == s["file_name"] and w["image"].shape == s["image"].shape
            assert not torch.equal(w["image"], s["image"])
            assert torch.equal(w["instances"].gt_boxes.tensor, s["instances"].gt_boxes.tensor)


class _AuditLoader:
    """The paired loader with every target dict wrapped in a key-recording dict that also carries bogus
    labels: reading them would change the result (or break it)."""

    def __init__(self, loader, seen):
        self.loader, self.seeds, self.seen = loader, loader.seeds, seen

    def __iter__(self):
        for source, target in self.loader:
            wrapped = []
            for t in target:
                d = _KeyAuditDict(t)
                inst = Instances((3, 3))
                inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 1e6, 1e6]]))
                inst.gt_classes = torch.tensor([99])
                d["instances"] = inst
                d["annotations"] = [{"bbox": [0, 0, 1e6, 1e6], "category_id": 99}]
                self.seen.append(d)
                wrapped.append(d)
            yield source, wrapped


def test_target_labels_never_reach_training_even_with_monitoring(tmp_path, monkeypatch):
    """The teacher step reads only the weak and strong images (teacher, alignment; student) and -- for
    monitoring -- the file name and the recorded transform; labels fetched for monitoring change nothing in training."""
    opts = ["SOLVER.MAX_ITER", "1", "META.MODE", "first_order", "TEACHER.MONITOR_PERIOD", "1"]
    clean = train(_teacher_cfg(tmp_path, "clean", *opts, "TEACHER.MONITOR_GT", "False"))

    seen = []
    original = MetaAlignTrainer.build_train_loader.__func__
    monkeypatch.setattr(MetaAlignTrainer, "build_train_loader", classmethod(
        lambda cls, cfg, start_iter=0, seeds=None: _AuditLoader(original(cls, cfg, start_iter, seeds), seen)))
    audited = train(_teacher_cfg(tmp_path, "audited", *opts, "TEACHER.MONITOR_GT", "True"))
    assert len(seen) == 2
    assert all(d.read <= {"image", "image_strong", "file_name", "transforms"} for d in seen), [d.read for d in seen]
    assert all("image" in d.read and "file_name" in d.read for d in seen)
    for name in ("model", "ema"):
        a = clean.model if name == "model" else clean.step_trainer.ema.model
        b = audited.model if name == "model" else audited.step_trainer.ema.model
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items()), name
    assert any("teacher/pseudo_precision" in r for r in _metrics(tmp_path / "audited"))
    assert not any("teacher/pseudo_precision" in r for r in _metrics(tmp_path / "clean"))


class _Crash(HookBase):
    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("api", ["v0.6", "newer"])
def test_kill_and_resume_in_the_teacher_phase_gives_the_same_student_and_teacher(tmp_path, monkeypatch, api):
    """Also on the trainer API of detectron2 builds newer than v0.6 (simulated: DefaultTrainer checkpoints the
    step trainer itself, the data loader is replaced through reset_data_loader): the EMA is its own entry."""
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "META.MODE", "first_order",
            "TEACHER.BURN_IN_ITERS", "1", "TEACHER.MONITOR_PERIOD", "1"]
    straight = train(_teacher_cfg(tmp_path, "a", *opts))
    resets = simulate_newer_detectron2(monkeypatch) if api == "newer" else None
    cfg = _teacher_cfg(tmp_path, "b", *opts)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, hooks=[_Crash(2)])
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000001.pth"  # saved in the teacher phase
    resumed = train(cfg, resume=True)
    assert resumed.start_iter == 2 and resumed.step_trainer.ema.restored
    if resets is not None:
        assert len(resets) == 1  # the data streams were replaced the newer way
    for name, a, b in (("student", straight.model, resumed.model),
                       ("teacher", straight.step_trainer.ema.model, resumed.step_trainer.ema.model)):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")
    rows = [r for r in _metrics(tmp_path / "b") if "loss_pseudo_cls" in r]
    assert {r["iteration"] for r in rows} >= {2, 3}


@pytest.mark.parametrize("opts,match", [
    (["TEACHER.ENABLED", "True"], "TEACHER.ENABLED needs MODEL.EMA.ENABLED"),
    (["TEACHER.ENABLED", "True", "MODEL.EMA.ENABLED", "True", "DATASETS.TRAIN_TARGET", "()",
      "MODEL.DA_HEADS.IMG_ENABLED", "False", "MODEL.DA_HEADS.INS_ENABLED", "False", "MODEL.DA_HEADS.CST_WEIGHT", "0.0"],
     "TEACHER.ENABLED needs unlabelled target images"),
    (["INPUT.STRONG_AUG.TARGET", "True"], "INPUT.STRONG_AUG.TARGET .* needs TEACHER.ENABLED"),
    (["TEACHER.ENABLED", "True", "MODEL.EMA.ENABLED", "True", "TEACHER.LOSSES", "('loss_da_img',)"],
     "TEACHER.LOSSES must name"),
    (["TEACHER.ENABLED", "True", "MODEL.EMA.ENABLED", "True", "TEACHER.SCORE_THRESH", "1.5"], "TEACHER.SCORE_THRESH"),
    (["TEACHER.ENABLED", "True", "MODEL.EMA.ENABLED", "True", "TEACHER.INIT", "random"], "TEACHER.INIT"),
    (["MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", "1.0"], "MODEL.EMA.DECAY"),
    (["INPUT.STRONG_AUG.SOURCE", "strongest"], "INPUT.STRONG_AUG.SOURCE must be one of"),
    (["INPUT.STRONG_AUG.SOURCE", "strong", "INPUT.STRONG_AUG.BLUR_PROB", "2.0"], "INPUT.STRONG_AUG.BLUR_PROB"),
])
def test_bad_teacher_config_is_one_clear_error(tmp_path, opts, match):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", *opts)
    with pytest.raises(ValueError, match=match):
        MetaAlignTrainer(cfg)
