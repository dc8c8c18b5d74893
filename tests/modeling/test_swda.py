"""SWDA's local / global discriminators and context vectors against the reference formulas.

The references below are written independently, in plain torch, the way the official PyTorch code
(VisionLearningGroup/DA_Detection, ``*_global_local.py`` and ``trainval_net_global_local.py``) computes them:
``netD_pixel`` (1x1 convs, no bias, sigmoid) with ``0.5 * mean(D**2)`` / ``0.5 * mean((1 - D)**2)``, ``netD``
(3x3 stride-2 convs + BN + ReLU + F.dropout, avg-pool, FC 128->2) with ``FocalLoss(class_num=2, gamma=5)``
(softmax, ``-(1 - p)**gamma * log p``, mean) weighted 0.5 per domain, and the context concatenation
``cat(global, cat(local, pooled_feat))`` tiled over the ROIs.
"""
import glob
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from metaalign_det.cli import setup_cfg
from metaalign_det.engine.loss_evaluator import LossEvaluator
from metaalign_det.meta import meta_align_grads, select_params
from metaalign_det.modeling import (
    SWDA_CONTEXT_KEY,
    SWDAGlobalHead,
    SWDALocalHead,
    domain_least_squares,
    domain_softmax_focal,
    roi_box_feature_dim,
)
from tests.helpers.configs import ROOT, enable_da, make_inputs, tiny_c4_cfg, tiny_fpn_cfg


# ------------------------------------------------------------------------------------ reference formulas
def ref_local_probs(head, x):
    """netD_pixel.forward (context=False) with the head's weights."""
    x = F.relu(F.conv2d(x, head.conv1.weight))
    x = F.relu(F.conv2d(x, head.conv2.weight))
    return torch.sigmoid(F.conv2d(x, head.conv3.weight))


def ref_local_context(head, x):
    x = F.relu(F.conv2d(x, head.conv1.weight))
    x = F.relu(F.conv2d(x, head.conv2.weight))
    return F.avg_pool2d(x, (x.size(2), x.size(3))).view(x.size(0), -1)


def ref_global(head, x, training=True, p=0.5):
    """netD.forward (F.dropout's default p = 0.5): returns (logits (N, 2), feat (N, 128))."""
    for conv, bn in zip(head.convs, head.norms):
        x = F.conv2d(x, conv.weight, stride=2, padding=1)
        x = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True) if training else \
            F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False)
        x = F.dropout(F.relu(x), p=p, training=training)
    feat = F.avg_pool2d(x, (x.size(2), x.size(3))).view(-1, 128)
    return F.linear(feat, head.fc.weight, head.fc.bias), feat


def ref_focal(logits, label, gamma=5.0):
    """SWDA's FocalLoss(class_num=2, gamma): softmax, the true class's p, -(1-p)^gamma log p, mean."""
    p = F.softmax(logits, dim=1)
    probs = p[torch.arange(len(logits)), label].view(-1, 1)
    return (-(torch.pow(1 - probs, gamma)) * probs.log()).mean()


# ------------------------------------------------------------------------------------------------- heads
def test_local_head_layers_init_and_probabilities():
    torch.manual_seed(0)
    head = SWDALocalHead(in_channels=256, grl_weight=1.0, init_std=0.01)
    convs = [head.conv1, head.conv2, head.conv3]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
        [(256, 256, (1, 1)), (256, 128, (1, 1)), (128, 1, (1, 1))]
    assert all(c.bias is None for c in convs)
    w = head.conv1.weight.detach()  # 65,536 N(0, 0.01) draws
    assert abs(float(w.mean())) < 5e-4 and float(w.std()) == pytest.approx(0.01, rel=0.03)
    x = torch.randn(2, 256, 5, 7)
    probs = head(x)
    assert probs.shape == (2, 1, 5, 7)
    torch.testing.assert_close(probs, ref_local_probs(head, x), rtol=0, atol=1e-7)
    ctx = head.context(x)
    assert ctx.shape == (2, 128)
    torch.testing.assert_close(ctx, ref_local_context(head, x), rtol=1e-6, atol=1e-7)


def test_local_least_squares_loss_equals_swda():
    torch.manual_seed(1)
    head = SWDALocalHead(in_channels=8, init_std=0.3, hidden_dims=(16, 128))
    xs, xt = torch.randn(2, 8, 6, 6), torch.randn(1, 8, 4, 9)
    ds, dt = head(xs), head(xt)
    ours = 0.5 * (domain_least_squares(ds, 0) + domain_least_squares(dt, 1))
    ref_s, ref_t = ref_local_probs(head, xs), ref_local_probs(head, xt)
    ref = 0.5 * torch.mean(ref_s ** 2) + 0.5 * torch.mean((1 - ref_t) ** 2)
    assert float(ref) > 0.01  # not a trivial zero
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)


def test_global_head_layers_and_focal_loss_equal_swda():
    torch.manual_seed(2)
    head = SWDAGlobalHead(in_channels=64, grl_weight=1.0, dropout=0.5)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.bias) for c in head.convs] == \
        [(64, 512, (3, 3), (2, 2), (1, 1), None), (512, 128, (3, 3), (2, 2), (1, 1), None),
         (128, 128, (3, 3), (2, 2), (1, 1), None)]
    assert [n.num_features for n in head.norms] == [512, 128, 128]
    assert (head.fc.in_features, head.fc.out_features) == (128, 2)
    xs, xt = torch.randn(2, 64, 16, 20), torch.randn(3, 64, 12, 16)
    with torch.no_grad():  # make the logits non-trivial (default init gives near-equal logits)
        head.fc.weight.mul_(20.0)
    head.train()
    out = {}
    for name, x in (("s", xs), ("t", xt)):
        torch.manual_seed(10)  # same dropout masks for ours and the reference
        ours = head(x)
        torch.manual_seed(10)
        ref, _ = ref_global(head, x, training=True)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        out[name] = (ours, ref)
    ours_loss = 0.5 * (domain_softmax_focal(out["s"][0], 0, 5.0) + domain_softmax_focal(out["t"][0], 1, 5.0))
    ref_loss = 0.5 * ref_focal(out["s"][1], torch.zeros(2, dtype=torch.long)) + \
        0.5 * ref_focal(out["t"][1], torch.ones(3, dtype=torch.long))
    assert float(ref_loss) > 1e-4
    torch.testing.assert_close(ours_loss, ref_loss, rtol=1e-5, atol=0)
    # the context: the pooled vector before the FC (eval: no dropout, running BN statistics)
    head.eval()
    _, feat = ref_global(head, xs, training=False)
    torch.testing.assert_close(head.context(xs), feat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_gradient_through_the_reversal_is_minus_weight_times_the_gradient(weight):
    torch.manual_seed(3)
    local = SWDALocalHead(in_channels=8, grl_weight=weight, init_std=0.3, hidden_dims=(16, 128))
    glob = SWDAGlobalHead(in_channels=8, grl_weight=weight, dropout=0.0)
    glob.eval()  # BN from running stats: the same function in both passes
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    loss = domain_least_squares(local(x), 1) + domain_softmax_focal(glob(x), 0)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = torch.mean((1 - ref_local_probs(local, x_ref)) ** 2) + ref_focal(
        ref_global(glob, x_ref, training=False)[0], torch.zeros(2, dtype=torch.long))
    g_ref, p_ref = torch.autograd.grad(ref, [x_ref, local.conv1.weight])
    assert float(g_ref.abs().max()) > 0
    torch.testing.assert_close(x.grad, -weight * g_ref, rtol=1e-5, atol=1e-9)
    # the discriminators themselves get the plain (not reversed) gradient
    torch.testing.assert_close(local.conv1.weight.grad, p_ref, rtol=1e-5, atol=1e-9)


def test_context_is_computed_on_gradient_stopped_features():
    torch.manual_seed(4)
    local = SWDALocalHead(in_channels=8, init_std=0.3, hidden_dims=(16, 128))
    x = torch.randn(1, 8, 5, 5, requires_grad=True)
    local.context(x).sum().backward()
    assert x.grad is None and float(local.conv1.weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------- in the detector
def _swda_cfg(kind, context=True, ins=False):
    cfg = tiny_fpn_cfg() if kind == "fpn" else tiny_c4_cfg()
    s = cfg.MODEL.SWDA
    s.LOCAL_ENABLED = s.GLOBAL_ENABLED = True
    s.LOCAL_CONTEXT = s.GLOBAL_CONTEXT = context
    if kind == "fpn":
        s.LOCAL_IN_FEATURE, s.GLOBAL_IN_FEATURE = "p2", "p4"
        cfg.MODEL.ROI_HEADS.NAME = "ContextStandardROIHeads" if context else "StandardROIHeads"
    else:
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res4"]
        cfg.MODEL.ROI_HEADS.NAME = "ContextRes5ROIHeads" if context else "Res5ROIHeads"
    return enable_da(cfg, img=False, ins=ins, cst_weight=0.0)


@pytest.mark.parametrize("kind", ["fpn", "c4"])
def test_context_is_tiled_over_the_rois_in_front_of_the_box_feature(kind):
    cfg = _swda_cfg(kind, ins=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    box_dim = roi_box_feature_dim(model.roi_heads)  # the box feature the instance head reads
    assert box_dim == (64 if kind == "fpn" else 128 * 4)  # FC_DIM / res5 output of the tiny R18
    assert model.roi_heads.box_predictor.cls_score.in_features == box_dim + 256
    assert model.da_ins_head.fc1.in_features == box_dim
    source, target = make_inputs(n_target=2)
    seen = {}

    def record(key, value):  # hooks must return None (else they replace inputs / outputs)
        seen.setdefault(key, value)

    model.roi_heads.box_predictor.cls_score.register_forward_pre_hook(lambda m, a: record("x", a[0]))
    model.backbone.register_forward_hook(lambda m, i, out: record("features", out))
    model.roi_heads.register_forward_pre_hook(lambda m, a: record("proposals", a[2]))
    model.eval()
    with torch.no_grad():
        model(source)
    feats, x = seen["features"], seen["x"]
    ctx = torch.cat([model.da_global_head.context(feats[cfg.MODEL.SWDA.GLOBAL_IN_FEATURE]),
                     model.da_local_head.context(feats[cfg.MODEL.SWDA.LOCAL_IN_FEATURE])], dim=1)
    assert ctx.shape == (2, 256)
    torch.testing.assert_close(feats[SWDA_CONTEXT_KEY], ctx)
    counts = [len(p) for p in seen["proposals"]]
    assert x.shape == (sum(counts), 256 + box_dim) and min(counts) > 0
    expected = torch.repeat_interleave(ctx, torch.tensor(counts), dim=0)
    torch.testing.assert_close(x[:, :256], expected)  # [global, local], row i for every ROI of image i

    # training: loss names go to the alignment group, every trainable parameter gets a gradient
    model.train()
    with EventStorage(0):
        losses = model(source, target)
    det, align = model.split_losses(losses)
    assert set(align) == {"loss_da_local", "loss_da_global", "loss_da_ins"} and "loss_cls" in det
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert {"local_acc_source", "global_acc_target"} <= set(model.last_alignment_metrics)


def test_the_box_predictor_width_and_the_context_keys_must_agree():
    cfg = _swda_cfg("fpn")
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    with pytest.raises(ValueError, match="ContextStandardROIHeads"):
        build_model(cfg)
    cfg = _swda_cfg("fpn", context=False)
    cfg.MODEL.ROI_HEADS.NAME = "ContextStandardROIHeads"
    with pytest.raises(ValueError, match="LOCAL_CONTEXT and GLOBAL_CONTEXT are both off"):
        build_model(cfg)
    cfg = _swda_cfg("fpn")
    cfg.MODEL.SWDA.LOCAL_ENABLED = False
    with pytest.raises(ValueError, match="MODEL.SWDA.LOCAL_CONTEXT needs MODEL.SWDA.LOCAL_ENABLED"):
        build_model(cfg)
    cfg = _swda_cfg("fpn", context=False)
    cfg.MODEL.SWDA.LOCAL_IN_FEATURE = "res2"  # not an FPN output
    with pytest.raises(ValueError, match="MODEL.SWDA.LOCAL_IN_FEATURE names unknown"):
        build_model(cfg)


def test_alignment_losses_on_fixed_features_equal_swda():
    """loss_da_local / loss_da_global of the model on given feature maps = SWDA's four domain terms."""
    cfg = _swda_cfg("c4", context=False)
    cfg.MODEL.SWDA.LOCAL_LOSS_WEIGHT = 0.1  # SWDA's eta for Sim10k
    cfg.MODEL.SWDA.GLOBAL_LOSS_WEIGHT = 0.1
    cfg.MODEL.SWDA.GLOBAL_DROPOUT = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(5)
    src = {"features": {"res2": torch.randn(2, 64, 12, 16, generator=g),
                        "res4": torch.randn(2, 256, 6, 8, generator=g)}}
    tgt = {"features": {"res2": torch.randn(2, 64, 10, 20, generator=g),
                        "res4": torch.randn(2, 256, 5, 10, generator=g)}}
    losses = model._alignment_losses(src, tgt)
    lh, gh = model.da_local_head, model.da_global_head
    ref_local = 0.5 * torch.mean(ref_local_probs(lh, src["features"]["res2"]) ** 2) + \
        0.5 * torch.mean((1 - ref_local_probs(lh, tgt["features"]["res2"])) ** 2)
    ref_global = 0.5 * ref_focal(ref_global_logits(gh, src["features"]["res4"]), torch.zeros(2, dtype=torch.long)) + \
        0.5 * ref_focal(ref_global_logits(gh, tgt["features"]["res4"]), torch.ones(2, dtype=torch.long))
    torch.testing.assert_close(losses["loss_da_local"], 0.1 * ref_local, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_da_global"], 0.1 * ref_global, rtol=1e-5, atol=0)


def ref_global_logits(head, x):
    return ref_global(head, x, training=True, p=0.0)[0]  # GLOBAL_DROPOUT 0 in that model


# ------------------------------------------------------------------------------ the official meta step
def test_first_order_fast_step_moves_only_the_meta_params_of_the_swda_config():
    """configs/demo/metaalign_swda_R18_FPN.yaml: theta' - theta is non-zero only on META.PARAMS, which are the
    official fast-weight layers (ResNet stage convs, FPN convs, box head + predictor, both discriminators) and
    exclude the stem, the norms and the RPN."""
    cfg = setup_cfg(f"{ROOT}/configs/demo/metaalign_swda_R18_FPN.yaml",
                    ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
                     "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50"])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fast = set(select_params(named, cfg.META.PARAMS))
    slow = {n for n, _ in named} - fast
    assert any(n.startswith("backbone.bottom_up.stem.") for n in slow)
    assert any(".norm." in n for n in slow) and all(".norm." not in n for n in fast)
    assert all(not n.startswith("proposal_generator.") for n in fast)
    for prefix in ("backbone.bottom_up.res2.", "backbone.bottom_up.res4.", "roi_heads.box_head.",
                   "roi_heads.box_predictor.", "da_local_head.", "da_global_head."):
        assert any(n.startswith(prefix) for n in fast), prefix
    assert any(n.startswith("da_global_head.norms.") for n in fast)  # the discriminator's BN is an ML layer

    source, target = make_inputs(h=64, w=96, n_source=2, n_target=2, empty_source=False)
    evaluator = LossEvaluator(model, source, target, seed=0)
    theta = {n: p.detach().clone() for n, p in named}
    seen = {}

    def outer(p):  # align_first: the detection loss is evaluated at theta'
        seen["theta_prime"] = {n: v.detach().clone() for n, v in p.items()}
        return evaluator.det_loss(p)

    with EventStorage(0):
        grads, _ = meta_align_grads(dict(named), evaluator.align_loss, outer, inner_lr=0.5, order="first",
                                    direction="align_first", fast=fast)
    moved = {n for n in theta if not torch.equal(seen["theta_prime"][n], theta[n])}
    assert moved <= fast and moved  # nothing outside META.PARAMS takes the inner step
    assert {n for n in moved if n.startswith(("da_local_head.", "da_global_head.", "backbone.bottom_up.res2."))}
    # every parameter, fast or not, still gets a gradient (the detection loss reaches the stem and the RPN)
    assert float(grads["backbone.bottom_up.stem.conv1.weight"].abs().sum()) > 0
    assert any(float(grads[n].abs().sum()) > 0 for n in grads if n.startswith("proposal_generator."))


@pytest.mark.parametrize("path", sorted(glob.glob(f"{ROOT}/configs/*/metaalign_swda_*.yaml")),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_meta_params_of_every_metaalign_swda_config_are_the_official_fast_layers(path):
    """Each pattern matches a trainable parameter (select_params raises otherwise); the fast set holds both
    discriminators and the box predictor, and no stem, norm or RPN parameter."""
    cfg = setup_cfg(path, ["MODEL.DEVICE", "meta"])
    assert (cfg.META.MODE, cfg.META.DIRECTION, cfg.META.INNER_LR_SCALE) == ("first_order", "alternate", 10.0)
    assert cfg.MODEL.SWDA.LOCAL_CONTEXT and cfg.MODEL.SWDA.GLOBAL_CONTEXT
    cfg.defrost()
    cfg.MODEL.WEIGHTS, cfg.MODEL.VGG.WEIGHTS = "", ""
    with torch.device("meta"):
        model = build_model(cfg)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fast = set(select_params(named, cfg.META.PARAMS))
    for prefix in ("roi_heads.box_predictor.", "da_local_head.", "da_global_head."):
        assert any(n.startswith(prefix) for n in fast), prefix
    assert not [n for n in fast if n.startswith("proposal_generator.") or ".stem." in n or ".norm." in n]
    assert any(n.startswith("backbone.") for n in fast)
    slow = {n for n, _ in named} - fast
    assert all(n.startswith(("proposal_generator.", "backbone.")) for n in slow), sorted(slow)[:5]
