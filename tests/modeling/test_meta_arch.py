"""DomainAdaptiveRCNN on tiny C4 / FPN / VGG16 configs: loss dict, DDP gradient rule, inference parity."""
import copy
import math

import pytest
import torch

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from metaalign_det.modeling.meta_arch import (
    ALIGN_LOSS_KEYS,
    DomainAdaptiveRCNN,
    split_losses,
    strip_da_heads,
)
from tests.helpers.configs import enable_da, make_image_input, make_inputs, tiny_c4_cfg, tiny_fpn_cfg, tiny_vgg_cfg

DET_KEYS = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
CFGS = {"c4": tiny_c4_cfg, "fpn": tiny_fpn_cfg, "vgg": tiny_vgg_cfg}


def _build(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    return model


def _losses(model, source, target=None, seed=1):
    torch.manual_seed(seed)  # ROI/anchor sampling and dropout draw from the global RNG
    with EventStorage():
        return model(source, target) if target is not None else model(source)


def _params_without_grad(model):
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("arch", ["c4", "fpn", "vgg"])
def test_da_step_losses_and_every_parameter_gets_a_gradient(arch):
    model = _build(enable_da(CFGS[arch]()))
    assert isinstance(model, DomainAdaptiveRCNN)
    # 2 source images (the second has NO boxes) + 1 target image of another size
    source, target = make_inputs(n_source=2, n_target=1)
    assert len(source[1]["instances"]) == 0
    losses = _losses(model, source, target)
    assert set(losses) == DET_KEYS | set(ALIGN_LOSS_KEYS)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    # small discriminator init: both domain losses start at ~log 2
    assert losses["loss_da_img"].item() == pytest.approx(math.log(2.0), abs=0.02)
    assert 0.5 < losses["loss_da_ins"].item() < 0.9
    sum(losses.values()).backward()
    assert _params_without_grad(model) == []  # DDP rule: every trainable parameter, every step
    assert model.da_img_head.conv1.weight.grad.abs().sum() > 0
    assert model.da_ins_head.fc1.weight.grad.abs().sum() > 0


def test_fpn_all_levels_shared_head_and_all_source_images_empty():
    cfg = enable_da(tiny_fpn_cfg())
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    model = _build(cfg)
    source = [make_image_input(64, 96, boxes=[], seed=0), make_image_input(64, 96, boxes=[], seed=1)]
    target = [make_image_input(96, 64, seed=5), make_image_input(64, 128, seed=6), make_image_input(32, 32, seed=7)]
    losses = _losses(model, source, target)
    assert set(losses) == DET_KEYS | set(ALIGN_LOSS_KEYS)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert _params_without_grad(model) == []


@pytest.mark.parametrize("img, ins", [(True, False), (False, True)])
def test_only_enabled_alignment_losses_are_present(img, ins):
    model = _build(enable_da(tiny_fpn_cfg(), img=img, ins=ins))
    source, target = make_inputs()
    losses = _losses(model, source, target)
    expected = DET_KEYS | ({"loss_da_img"} if img else set()) | ({"loss_da_ins"} if ins else set())
    assert set(losses) == expected
    sum(losses.values()).backward()
    assert _params_without_grad(model) == []


def test_loss_weights_multiply_and_focal_option():
    cfg = enable_da(tiny_fpn_cfg(), cst_weight=0.0)
    cfg.MODEL.DA_HEADS.IMG_LOSS_WEIGHT = 3.0
    cfg.MODEL.DA_HEADS.INS_LOSS_WEIGHT = 0.5
    cfg.MODEL.DA_HEADS.IMG_LOSS = "focal"
    cfg.MODEL.DA_HEADS.IMG_FOCAL_GAMMA = 2.0
    model = _build(cfg)
    source, target = make_inputs()
    losses = _losses(model, source, target)
    assert "loss_da_cst" not in losses  # CST_WEIGHT 0 = off
    # focal at logits ~0: 0.5**gamma * log 2, times the weight
    assert losses["loss_da_img"].item() == pytest.approx(3.0 * 0.25 * math.log(2.0), rel=0.05)
    assert losses["loss_da_ins"].item() == pytest.approx(0.5 * math.log(2.0), rel=0.1)


def test_split_losses_partitions_the_dict():
    model = _build(enable_da(tiny_fpn_cfg()))
    source, target = make_inputs()
    losses = _losses(model, source, target)
    det, align = DomainAdaptiveRCNN.split_losses(losses)
    assert set(det) == DET_KEYS and set(align) == set(ALIGN_LOSS_KEYS)
    assert all(det[k] is losses[k] for k in det) and all(align[k] is losses[k] for k in align)
    assert split_losses({"loss_cls": 1.0}) == ({"loss_cls": 1.0}, {})


class _KeyAuditDict(dict):
    """A target input dict that records which keys the model reads."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.read.add(k)
        return super().get(k, default)


def test_target_annotations_are_never_read():
    model = _build(enable_da(tiny_fpn_cfg()))
    source, target = make_inputs(n_target=2)
    reference = {k: v.item() for k, v in _losses(model, source, target).items()}
    bogus = []
    for t in target:
        d = _KeyAuditDict(t)
        inst = Instances((3, 3))  # wrong size, absurd classes: reading them would change or break things
        inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 1e6, 1e6]]))
        inst.gt_classes = torch.tensor([99])
        d["instances"] = inst
        bogus.append(d)
    again = {k: v.item() for k, v in _losses(model, source, bogus).items()}
    assert again == reference
    assert all(d.read == {"image"} for d in bogus)


def _with_bogus_labels(target):
    out = []
    for t in target:
        d = _KeyAuditDict(t)
        inst = Instances((3, 3))  # wrong size, absurd classes: reading them would change or break things
        inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 1e6, 1e6]]))
        inst.gt_classes = torch.tensor([99])
        d["instances"] = inst
        out.append(d)
    return out


def test_teacher_pseudo_labelling_reads_only_the_target_image():
    """The audit above, extended to the mean teacher (metaalign_det/engine/teacher.py): it labels target images
    reading nothing but "image", and labels attached to them change nothing."""
    from metaalign_det.engine.teacher import pseudo_label

    cfg = enable_da(tiny_fpn_cfg())
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    teacher = _build(cfg).eval()
    _, target = make_inputs(n_target=2)
    reference = pseudo_label(teacher, target, 0.0)
    bogus = _with_bogus_labels(target)
    again = pseudo_label(teacher, bogus, 0.0)
    assert all(len(r) > 0 for r in reference)
    for r, a in zip(reference, again):
        assert torch.equal(r.gt_boxes.tensor, a.gt_boxes.tensor) and torch.equal(r.gt_classes, a.gt_classes)
    assert all(d.read == {"image"} for d in bogus)


def test_da_off_equals_generalized_rcnn():
    cfg = tiny_fpn_cfg()  # DA heads off
    model = _build(cfg)
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    plain = _build(plain_cfg, seed=123)
    assert type(plain) is GeneralizedRCNN
    plain.load_state_dict(model.state_dict(), strict=True)  # no extra keys when DA is off
    source, target = make_inputs()
    expected = {k: v.item() for k, v in _losses(plain, source).items()}
    assert {k: v.item() for k, v in _losses(model, source, target).items()} == expected  # target ignored
    # DA on, but a det-only call (target None; the meta step's L_det(theta')) gives the same losses
    da_model = _build(enable_da(tiny_fpn_cfg()))
    missing, unexpected = da_model.load_state_dict(model.state_dict(), strict=False)
    assert all(k.startswith(("da_img_head.", "da_ins_head.")) for k in missing) and not unexpected
    assert {k: v.item() for k, v in _losses(da_model, source).items()} == expected


@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_checkpoint_loads_into_plain_generalized_rcnn_with_identical_inference(arch):
    da_cfg = enable_da(CFGS[arch]())
    da_model = _build(da_cfg)
    plain_cfg = CFGS[arch]()
    plain_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    plain = _build(plain_cfg, seed=7)
    state = da_model.state_dict()
    result = plain.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    da_keys = {k for k in state if k.startswith(("da_img_head.", "da_ins_head."))}
    assert da_keys and set(result.unexpected_keys) == da_keys
    # the deployment helper: strict load
    plain.load_state_dict(strip_da_heads(state), strict=True)
    assert set(strip_da_heads({"module." + k: v for k, v in state.items()})) == {
        "module." + k for k in state if k not in da_keys
    }

    da_model.eval()
    plain.eval()
    image = [make_image_input(64, 96, seed=3)]
    with torch.no_grad():
        ours = da_model(image, [make_image_input(48, 48, seed=4)])[0]["instances"]  # target ignored in eval
        theirs = plain(image)[0]["instances"]
    assert len(theirs) > 0
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    assert torch.equal(ours.scores, theirs.scores)
    assert torch.equal(ours.pred_classes, theirs.pred_classes)


def test_functional_call_at_substituted_parameters_and_deepcopy():
    model = _build(enable_da(tiny_fpn_cfg()))
    source, target = make_inputs()
    torch.manual_seed(0)
    # theta' = theta + small perturbation on the heads the hooks read from and the discriminators
    fast = {
        n: (p + 0.05 * torch.randn_like(p)) if n.startswith(("roi_heads.box", "da_")) else p
        for n, p in model.named_parameters()
    }
    fast = {n: t.detach().requires_grad_(True) for n, t in fast.items()}
    torch.manual_seed(1)
    with EventStorage():
        fc_losses = torch.func.functional_call(model, fast, (source, target))
    assert set(fc_losses) == DET_KEYS | set(ALIGN_LOSS_KEYS)
    sum(fc_losses.values()).backward()
    # the gradient reaches the substituted tensors, not the module's own parameters
    assert all(fast[n].grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.parameters())

    # a deep copy holding theta' computes the same losses: hooks recorded the substituted values
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in clone.named_parameters():
            p.copy_(fast[n])
    clone_losses = _losses(clone, source, target, seed=1)
    for k in fc_losses:
        torch.testing.assert_close(clone_losses[k], fc_losses[k].detach(), rtol=1e-5, atol=1e-6)
    # the copy's hooks feed the copy's own recorder; nothing is left recorded after a forward
    assert clone._recorder is not model._recorder
    assert model._recorder._record is None and clone._recorder._record is None


def test_recorder_is_cleared_after_a_failing_forward():
    model = _build(enable_da(tiny_fpn_cfg()))
    source, target = make_inputs()
    no_labels = [{"image": s["image"]} for s in source]
    with pytest.raises(AssertionError):  # detectron2's RPN requires gt_instances in training
        _losses(model, no_labels, target)
    assert model._recorder._record is None
    assert set(_losses(model, source, target)) == DET_KEYS | set(ALIGN_LOSS_KEYS)


def test_unknown_img_feature_is_one_clear_error():
    cfg = enable_da(tiny_c4_cfg())
    cfg.MODEL.DA_HEADS.IMG_IN_FEATURES = ["res4", "p3"]
    with pytest.raises(ValueError, match=r"MODEL\.DA_HEADS\.IMG_IN_FEATURES.*'p3'.*\['res4'\]"):
        build_model(cfg)


def test_instance_head_with_unknown_roi_heads_is_a_clear_error():
    cfg = enable_da(tiny_fpn_cfg())
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"  # three box predictors: no single box feature to align
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True  # required by d2 v0.6 cascade
    with pytest.raises(TypeError, match=r"INS_ENABLED.*CascadeROIHeads.*MODEL\.ROI_HEADS\.NAME"):
        build_model(cfg)


def test_consistency_needs_both_heads_and_empty_target_list_is_rejected():
    cfg = enable_da(tiny_fpn_cfg(), ins=False)
    cfg.MODEL.DA_HEADS.CST_WEIGHT = 0.1
    with pytest.raises(ValueError, match="CST_WEIGHT"):
        build_model(cfg)
    model = _build(enable_da(tiny_fpn_cfg()))
    source, _ = make_inputs()
    with pytest.raises(ValueError, match="empty"):
        _losses(model, source, [])


@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_target_roi_pathway_matches_what_the_box_predictor_sees(arch):
    # the target's instance features are computed by direct calls (pooler + box head / res5 + mean);
    # they must be the very features the box predictor receives for the same boxes on the source side
    model = _build(enable_da(CFGS[arch]()))
    seen = {}

    def put(key, value):  # returns None: a hook that returns a value would replace args/outputs
        seen.setdefault(key, value)

    pooler = model.roi_heads.box_pooler if arch == "fpn" else model.roi_heads.pooler
    handles = [
        pooler.register_forward_pre_hook(lambda m, args: put("boxes", args[1])),
        model.roi_heads.box_predictor.register_forward_pre_hook(lambda m, args: put("x", args[0])),
        model.backbone.register_forward_hook(lambda m, i, out: put("features", out)),
    ]
    source, _ = make_inputs()
    _losses(model, source)
    for h in handles:
        h.remove()
    with torch.no_grad():
        direct = model._roi_box_features(seen["features"], seen["boxes"])
    assert direct.shape[0] == sum(len(b) for b in seen["boxes"]) > 0
    torch.testing.assert_close(direct, seen["x"].flatten(1))


def test_discriminator_accuracies_are_reported_next_to_the_losses():
    """last_alignment_metrics: fraction of locations / ROIs each head puts in the right domain, computed from
    the logits of the same forward (no host sync: 0-d tensors), never part of the loss dict."""
    model = _build(enable_da(tiny_fpn_cfg()))
    source, target = make_inputs(n_source=2, n_target=2, empty_source=False)
    losses = _losses(model, source, target)
    m = model.last_alignment_metrics
    assert set(m) == {"img_acc_source", "img_acc_target", "ins_acc_source", "ins_acc_target"}
    assert not any(k in losses for k in m)
    for k, v in m.items():
        assert torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad and 0.0 <= v.item() <= 1.0, k

    # a discriminator that says "target" everywhere is right on every target location, wrong on every source
    # one (and the reverse): checks the label convention source = 0 (logit < 0), target = 1 (logit > 0)
    for bias, expect_src, expect_tgt in ((50.0, 0.0, 1.0), (-50.0, 1.0, 0.0)):
        with torch.no_grad():
            model.da_img_head.conv2.bias.fill_(bias)
            model.da_ins_head.fc3.bias.fill_(bias)
        _losses(model, source, target)
        m = model.last_alignment_metrics
        assert m["img_acc_source"].item() == expect_src and m["img_acc_target"].item() == expect_tgt
        assert m["ins_acc_source"].item() == expect_src and m["ins_acc_target"].item() == expect_tgt


def test_accuracies_follow_the_enabled_heads():
    model = _build(enable_da(tiny_fpn_cfg(), img=True, ins=False, cst_weight=0.0))
    source, target = make_inputs()
    _losses(model, source, target)
    assert set(model.last_alignment_metrics) == {"img_acc_source", "img_acc_target"}
