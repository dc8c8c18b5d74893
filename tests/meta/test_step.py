"""Tests for metaalign_det.meta.step: the MetaAlign step against brute-force autograd references.

A tiny float64 net with two losses. ``w1``/``b1`` (the "backbone") are shared; ``w2``/``b2`` (the
"detector head") are touched only by the detection loss and ``wa`` (the "discriminator") only by the
alignment loss, so the zero-gradient handling is exercised in both directions.
"""
import importlib.util
import logging
import math
import os
import sys

import pytest
import torch
import torchvision
from torch.autograd.function import once_differentiable

from metaalign_det.meta import grad_stats as grad_stats_mod
from metaalign_det.meta import hvp as hvp_mod
from metaalign_det.meta import meta_align_grads, resolve_direction, select_params
from metaalign_det.meta import step as step_mod

DT = torch.float64
RTOL, ATOL = 1e-6, 1e-10
SHARED = ("w1", "b1")


# ----------------------------------------------------------------------------------------------------
# the toy problem
# ----------------------------------------------------------------------------------------------------
def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=DT)
    y = torch.randn(6, 2, generator=g, dtype=DT)
    dom = torch.tensor([0.0, 0, 0, 1, 1, 1], dtype=DT)
    return x, y, dom


X, Y, DOM = _data()


def make_params(requires_grad=True, dtype=DT):
    g = torch.Generator().manual_seed(1)
    shapes = {"w1": (4, 3), "b1": (4,), "w2": (2, 4), "b2": (2,), "wa": (4,)}
    return {k: torch.randn(*s, generator=g, dtype=DT).mul(0.8).to(dtype).requires_grad_(requires_grad)
            for k, s in shapes.items()}


def _feat(p, act=torch.tanh):
    return act(X.to(p["w1"].dtype) @ p["w1"].T + p["b1"])


def det_loss(p):
    out = _feat(p) @ p["w2"].T + p["b2"]
    return ((out - Y.to(out.dtype)) ** 2).mean()


def align_loss(p, act=torch.tanh):
    logits = _feat(p, act) @ p["wa"]
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, DOM.to(logits.dtype))


class OnceTanh(torch.autograd.Function):
    """tanh whose backward cannot be differentiated again (like many custom CUDA ops)."""

    @staticmethod
    def forward(ctx, a):
        out = a.tanh()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        return grad_out * (1 - out * out)


def align_loss_once(p):
    return align_loss(p, act=OnceTanh.apply)


def _grads(loss_fn, p):
    """Plain autograd gradient of loss_fn at p (dict of detached values), zeros where unused."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in p.items()}
    gs = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), gs)}


def reference(params, direction, lr, second, inner_factor=1.0, inner=None, outer=None):
    """Brute force: differentiate c*L_in(th) + L_out(th - lr*c*grad L_in(th)) (through the inner
    gradient for second order, with it detached for first order). c models an in-place hook on g1."""
    if inner is None:
        inner, outer = (align_loss, det_loss) if direction == "align_first" else (det_loss, align_loss)
    th = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    keys = list(th)
    l_in = inner(th)
    gi = torch.autograd.grad(l_in, [th[k] for k in keys], create_graph=second, retain_graph=True,
                             allow_unused=True)
    gi = [torch.zeros_like(th[k]) if g is None else g for k, g in zip(keys, gi)]
    if not second:
        gi = [g.detach() for g in gi]
    th_prime = {k: th[k] - lr * inner_factor * g for k, g in zip(keys, gi)}
    obj = inner_factor * l_in + outer(th_prime)
    out = torch.autograd.grad(obj, [th[k] for k in keys], allow_unused=True)
    return {k: torch.zeros_like(th[k]) if g is None else g for k, g in zip(keys, out)}


def assert_grads_close(a, b, rtol=RTOL, atol=ATOL):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


def _max_abs_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


LR = 0.7  # large, so that the second-order term is far above the tolerances


# ----------------------------------------------------------------------------------------------------
# correctness against brute force
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["align_first", "det_first"])
def test_first_order_matches_reference(direction):
    params = make_params()
    grads, stats = meta_align_grads(params, align_loss, det_loss, LR, order="first", direction=direction)
    assert_grads_close(grads, reference(params, direction, LR, second=False))
    assert stats["finite"] is True and stats["hvp"] is None and stats["direction"] == direction
    # the inner step matters: differs from the plain joint gradient
    joint = reference(params, direction, 0.0, second=False)
    assert _max_abs_diff(grads, joint) > 1e-3


@pytest.mark.parametrize("direction", ["align_first", "det_first"])
@pytest.mark.parametrize("hvp", ["double_backward", "auto"])
def test_second_order_matches_reference(direction, hvp):
    params = make_params()
    grads, stats = meta_align_grads(params, align_loss, det_loss, LR, order="second", direction=direction,
                                    hvp=hvp)
    ref = reference(params, direction, LR, second=True)
    assert_grads_close(grads, ref)
    assert stats["hvp"] == "double_backward"
    # the Hessian term is far above the tolerance: first order is measurably different
    assert _max_abs_diff(ref, reference(params, direction, LR, second=False)) > 1e-3


@pytest.mark.parametrize("direction", ["align_first", "det_first"])
def test_finite_difference_hvp_matches_double_backward(direction):
    params = make_params()
    fd, st_fd = meta_align_grads(params, align_loss, det_loss, LR, order="second", direction=direction,
                                 hvp="finite_difference")
    db, _ = meta_align_grads(params, align_loss, det_loss, LR, order="second", direction=direction,
                             hvp="double_backward")
    assert st_fd["hvp"] == "finite_difference"
    assert_grads_close(fd, db, rtol=1e-4, atol=1e-8)
    assert_grads_close(fd, reference(params, direction, LR, second=True), rtol=1e-4, atol=1e-8)


def test_order_none_is_joint_gradient():
    params = make_params()
    calls = []

    def rec(fn):
        def wrapped(p):
            calls.append(p)
            return fn(p)
        return wrapped

    grads, stats = meta_align_grads(params, rec(align_loss), rec(det_loss), LR, order="none")
    ga, gd = _grads(align_loss, params), _grads(det_loss, params)
    assert_grads_close(grads, {k: ga[k] + gd[k] for k in ga})
    assert len(calls) == 2 and calls[0] is calls[1]  # one shared dict: callers may share a forward
    assert math.isnan(stats["grad_cos"])  # compute_cos defaults to False for "none"
    assert stats["direction"] is None and stats["hvp"] is None
    assert stats["align_loss"] == pytest.approx(align_loss(params).item(), rel=1e-12)
    assert stats["det_loss"] == pytest.approx(det_loss(params).item(), rel=1e-12)

    grads2, stats2 = meta_align_grads(params, align_loss, det_loss, LR, order="none", compute_cos=True)
    assert_grads_close(grads2, grads)
    a = torch.cat([ga[k].reshape(-1) for k in SHARED])
    d = torch.cat([gd[k].reshape(-1) for k in SHARED])
    assert stats2["grad_cos"] == pytest.approx((a @ d / (a.norm() * d.norm())).item(), rel=1e-9)
    assert stats2["align_grad_norm"] == pytest.approx(
        torch.cat([g.reshape(-1) for g in ga.values()]).norm().item(), rel=1e-9)


@pytest.mark.parametrize("compute_cos", [False, True])
def test_order_none_with_one_shared_forward(compute_cos):
    """A caller may evaluate both losses in one forward (cached on the dict object) in order "none"."""
    params = make_params()
    cache = {"p": None, "losses": None, "forwards": 0}

    def both(p):
        if cache["p"] is not p:
            cache["p"], cache["losses"] = p, (align_loss(p), det_loss(p))
            cache["forwards"] += 1
        return cache["losses"]

    grads, _ = meta_align_grads(params, lambda p: both(p)[0], lambda p: both(p)[1], LR, order="none",
                                compute_cos=compute_cos)
    assert cache["forwards"] == 1
    ga, gd = _grads(align_loss, params), _grads(det_loss, params)
    assert_grads_close(grads, {k: ga[k] + gd[k] for k in ga})


def test_order_aliases():
    params = make_params()
    a, _ = meta_align_grads(params, align_loss, det_loss, LR, order="second_order")
    b, _ = meta_align_grads(params, align_loss, det_loss, LR, order="second")
    assert_grads_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# double-backward fallbacks
# ----------------------------------------------------------------------------------------------------
def test_auto_falls_back_for_once_differentiable_and_logs_once(monkeypatch, caplog):
    """@once_differentiable: torch.autograd.grad(inputs=...) would silently drop the term; must fall back."""
    monkeypatch.setattr(hvp_mod, "_fallback_logged", False)
    caplog.set_level(logging.INFO, logger=hvp_mod.__name__)
    params = make_params()
    ref = reference(params, "align_first", LR, second=True)  # same math with a twice-differentiable tanh
    for _ in range(2):
        grads, stats = meta_align_grads(params, align_loss_once, det_loss, LR, order="second", hvp="auto")
        assert stats["hvp"] == "finite_difference"
        assert_grads_close(grads, ref, rtol=1e-4, atol=1e-8)
    records = [r for r in caplog.records if r.name == hvp_mod.__name__]
    assert len(records) == 1
    assert "finite-difference" in records[0].getMessage()


def test_explicit_double_backward_refuses_once_differentiable():
    with pytest.raises(RuntimeError, match="differentiated twice"):
        meta_align_grads(make_params(), align_loss_once, det_loss, LR, order="second",
                         hvp="double_backward")


def test_auto_falls_back_for_roi_align(monkeypatch, caplog):
    """The real case: torchvision roi_align raises 'double backwards on roi_align not supported'."""
    monkeypatch.setattr(hvp_mod, "_fallback_logged", False)
    caplog.set_level(logging.INFO, logger=hvp_mod.__name__)
    g = torch.Generator().manual_seed(3)
    params = {"f": torch.randn(1, 1, 5, 5, generator=g, dtype=DT), "w": torch.randn(4, generator=g, dtype=DT)}
    boxes = torch.tensor([[0, 0.3, 0.6, 3.7, 3.2]], dtype=DT)

    def roi(fmap):
        return torchvision.ops.roi_align(fmap, boxes, (2, 2), 1.0, 2, True).reshape(-1)

    # roi_align is linear in its input: its Jacobian gives a twice-differentiable stand-in for the reference
    probe = torch.zeros(1, 1, 5, 5, dtype=DT, requires_grad=True)
    jac = torch.stack([torch.autograd.grad(roi(probe)[i], probe)[0].reshape(-1) for i in range(4)])

    def inner_roi(p):
        return (torch.tanh(roi(p["f"] ** 2)) * p["w"]).sum()

    def inner_lin(p):
        return (torch.tanh(jac @ (p["f"] ** 2).reshape(-1)) * p["w"]).sum()

    def outer(p):
        return (torch.sin(p["f"]).sum() * p["w"].sum()) ** 2 / 10

    with pytest.raises(RuntimeError, match="roi_align"):  # premise: no double backward
        meta_align_grads(params, inner_roi, outer, 0.5, order="second", hvp="double_backward")
    grads, stats = meta_align_grads(params, inner_roi, outer, 0.5, order="second", hvp="auto")
    assert stats["hvp"] == "finite_difference"
    ref = reference(params, "align_first", 0.5, second=True, inner=inner_lin, outer=outer)
    assert_grads_close(grads, ref, rtol=1e-4, atol=1e-8)
    first = reference(params, "align_first", 0.5, second=False, inner=inner_lin, outer=outer)
    assert _max_abs_diff(ref, first) > 1e-3  # the Hessian term is not negligible here
    assert len([r for r in caplog.records if r.name == hvp_mod.__name__]) == 1


def test_unrelated_runtime_error_is_not_swallowed():
    calls = {"n": 0}

    def flaky_inner(p):
        calls["n"] += 1
        if calls["n"] == 2:  # the double-backward re-evaluation
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return align_loss(p)

    with pytest.raises(RuntimeError, match="illegal memory access"):
        meta_align_grads(make_params(), flaky_inner, det_loss, LR, order="second", hvp="auto")


# ----------------------------------------------------------------------------------------------------
# stats
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["align_first", "det_first"])
def test_stats_cos_norms_losses(direction):
    params = make_params()
    _, stats = meta_align_grads(params, align_loss, det_loss, LR, order="first", direction=direction)
    base = {k: v.detach() for k, v in params.items()}
    if direction == "align_first":
        ga = _grads(align_loss, base)
        shifted = {k: base[k] - LR * ga[k] for k in base}
        gd = _grads(det_loss, shifted)
        l_align, l_det = align_loss(base), det_loss(shifted)
    else:
        gd = _grads(det_loss, base)
        shifted = {k: base[k] - LR * gd[k] for k in base}
        ga = _grads(align_loss, shifted)
        l_align, l_det = align_loss(shifted), det_loss(base)
    a = torch.cat([ga[k].reshape(-1) for k in SHARED])
    d = torch.cat([gd[k].reshape(-1) for k in SHARED])
    cos = (a @ d / (a.norm() * d.norm())).item()
    assert stats["grad_cos"] == pytest.approx(cos, rel=1e-9)
    # over ALL params the cosine would differ (only-one-loss params are zero in the other): make sure
    # the test can tell the shared-only definition apart
    a_all = torch.cat([ga[k].reshape(-1) for k in ga])
    d_all = torch.cat([gd[k].reshape(-1) for k in gd])
    assert abs((a_all @ d_all / (a_all.norm() * d_all.norm())).item() - cos) > 1e-3
    assert stats["align_grad_norm"] == pytest.approx(a_all.norm().item(), rel=1e-9)
    assert stats["det_grad_norm"] == pytest.approx(d_all.norm().item(), rel=1e-9)
    assert stats["align_loss"] == pytest.approx(l_align.item(), rel=1e-12)
    assert stats["det_loss"] == pytest.approx(l_det.item(), rel=1e-12)
    assert stats["inner_lr"] == LR and stats["order"] == "first"
    assert all(isinstance(stats[k], float) for k in ("grad_cos", "align_grad_norm", "det_grad_norm",
                                                     "align_loss", "det_loss", "inner_lr"))


def test_loss_touching_no_param():
    params = make_params()
    grads, stats = meta_align_grads(params, lambda p: torch.zeros((), dtype=DT), det_loss, LR)
    assert_grads_close(grads, _grads(det_loss, params))
    assert math.isnan(stats["grad_cos"]) and stats["align_grad_norm"] == 0.0 and stats["finite"]


# ----------------------------------------------------------------------------------------------------
# loss scale, non-finite, hook, params hygiene
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order,hvp", [("none", "auto"), ("first", "auto"), ("second", "double_backward"),
                                       ("second", "finite_difference")])
def test_loss_scale_is_undone(order, hvp):
    params = make_params()
    a, sa = meta_align_grads(params, align_loss, det_loss, LR, order=order, hvp=hvp, loss_scale=1.0)
    b, sb = meta_align_grads(params, align_loss, det_loss, LR, order=order, hvp=hvp, loss_scale=1024.0)
    assert_grads_close(a, b, rtol=1e-10, atol=1e-14)
    assert sa["align_loss"] == pytest.approx(sb["align_loss"], rel=1e-12)  # unscaled values
    # the fp16 trainer passes the GradScaler's scale as a 0-d device tensor (no host read): the same result
    c, sc = meta_align_grads(params, align_loss, det_loss, LR, order=order, hvp=hvp,
                             loss_scale=torch.tensor(1024.0))
    assert_grads_close(b, c, rtol=1e-10, atol=1e-14)
    assert sc["align_loss"] == pytest.approx(sb["align_loss"], rel=1e-12)


def test_non_finite_inner_gradient_skips_inner_step():
    params = make_params()
    outer_calls, hook_calls = [], []

    def nan_align(p):
        return align_loss(p) + (p["wa"] * float("nan")).sum()

    def counting_det(p):
        outer_calls.append(1)
        return det_loss(p)

    grads, stats = meta_align_grads(params, nan_align, counting_det, LR, order="second",
                                    inner_grad_hook=hook_calls.append)
    assert stats["finite"] is False
    assert torch.isnan(grads["wa"]).all()
    assert outer_calls == []  # no inner step taken with a non-finite gradient
    assert len(hook_calls) == 1  # the (DDP) hook still runs, so no process skips the collective
    assert math.isnan(stats["det_loss"]) and math.isnan(stats["grad_cos"])


def test_non_finite_outer_gradient_reported():
    params = make_params()
    grads, stats = meta_align_grads(params, align_loss, lambda p: det_loss(p) * float("inf"), LR,
                                    order="second")
    assert stats["finite"] is False and stats["hvp"] is None
    assert not torch.isfinite(grads["w2"]).all()
    _, ok = meta_align_grads(params, align_loss, det_loss, LR, order="first")
    assert ok["finite"] is True


@pytest.mark.parametrize("order", ["first", "second"])
def test_inner_grad_hook_changes_inner_step(order):
    params = make_params()
    seen = []

    def double(gs):
        seen.append([g.clone() for g in gs])
        for g in gs:
            g.mul_(2.0)

    grads, _ = meta_align_grads(params, align_loss, det_loss, LR, order=order, inner_grad_hook=double)
    assert len(seen) == 1 and len(seen[0]) == len(params)
    assert_grads_close(dict(zip(params, seen[0])), _grads(align_loss, params))  # hook got unscaled g1
    # the hooked g1 is both the g1 term of the result and the inner step: theta' = theta - LR * 2 g1
    expected = reference(params, "align_first", LR, second=False, inner_factor=2.0)
    if order == "second":
        # the Hessian term stays the local H_align(theta) applied to g2 = grad L_det(theta')
        # (a mean all-reduce hook makes that the global H after the trainer's final all-reduce)
        keys = list(params)
        base = tuple(params[k].detach() for k in keys)
        g1 = _grads(align_loss, params)
        g2 = _grads(det_loss, {k: params[k].detach() - LR * 2.0 * g1[k] for k in keys})
        _, hv = torch.autograd.functional.hvp(lambda *ts: align_loss(dict(zip(keys, ts))), base,
                                              tuple(g2[k] for k in keys))
        expected = {k: expected[k] - LR * h for k, h in zip(keys, hv)}
    assert_grads_close(grads, expected)


def test_hook_must_work_in_place():
    def functional_hook(gs):
        return [g * 2 for g in gs]  # would be silently ignored if accepted

    with pytest.raises(ValueError, match="inner_grad_hook"):
        meta_align_grads(make_params(), align_loss, det_loss, LR, inner_grad_hook=functional_hook)


def test_outer_grad_hook_feeds_hvp():
    """Scaling g2 by c before the HVP scales the whole outer term by c (what an all-reduce relies on)."""
    params = make_params()
    def triple(gs):
        for g in gs:
            g.mul_(3.0)

    base, _ = meta_align_grads(params, align_loss, det_loss, LR, order="second")
    scaled, _ = meta_align_grads(params, align_loss, det_loss, LR, order="second", outer_grad_hook=triple)
    g1 = _grads(align_loss, params)
    assert_grads_close({k: scaled[k] - g1[k] for k in g1}, {k: 3.0 * (base[k] - g1[k]) for k in g1})


@pytest.mark.parametrize("order", ["none", "first", "second"])
def test_params_not_mutated_and_frozen_params_work(order):
    params = make_params()
    before = {k: v.detach().clone() for k, v in params.items()}
    grads, _ = meta_align_grads(params, align_loss, det_loss, LR, order=order, compute_cos=True)
    for k, v in params.items():
        assert torch.equal(v, before[k]) and v.requires_grad and v.grad is None
    frozen = make_params(requires_grad=False)
    grads_frozen, _ = meta_align_grads(frozen, align_loss, det_loss, LR, order=order, compute_cos=True)
    assert all(not v.requires_grad for v in frozen.values())
    assert_grads_close(grads_frozen, grads, rtol=0, atol=0)


def test_float32_params_keep_dtype():
    params = make_params(dtype=torch.float32)
    grads, stats = meta_align_grads(params, align_loss, det_loss, LR, order="second")
    assert all(grads[k].dtype == torch.float32 and grads[k].shape == params[k].shape for k in params)
    ref = reference({k: v.double() for k, v in params.items()}, "align_first", LR, second=True)
    assert_grads_close({k: g.double() for k, g in grads.items()}, ref, rtol=1e-4, atol=1e-5)
    assert stats["finite"]


# ----------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"order": "third"}, "order"),
    ({"direction": "sideways"}, "direction"),
    ({"direction": "alternate"}, "resolve_direction"),
    ({"hvp": "magic"}, "hvp"),
    ({"inner_lr": -0.1}, "inner_lr"),
    ({"inner_lr": float("nan")}, "inner_lr"),
    ({"inner_lr": "0.1"}, "inner_lr"),
    ({"fd_eps": 0.0}, "fd_eps"),
    ({"loss_scale": 0.0}, "loss_scale"),
    ({"params": {}}, "params"),
    ({"params": {"w": torch.zeros(3, dtype=torch.long)}}, "params"),
    ({"align_loss": "not callable"}, "align_loss"),
    ({"align_loss": lambda p: torch.ones(2, dtype=DT)}, "align_loss"),
    ({"det_loss": lambda p: 1.0}, "det_loss"),
    ({"inner_grad_hook": 3}, "inner_grad_hook"),
    ({"compute_cos": "yes"}, "compute_cos"),
])
def test_argument_validation(kwargs, match):
    args = {"params": make_params(), "align_loss": align_loss, "det_loss": det_loss, "inner_lr": LR}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        meta_align_grads(**args)


def test_outer_non_scalar_loss_named():
    with pytest.raises(ValueError, match="det_loss"):
        meta_align_grads(make_params(), align_loss, lambda p: det_loss(p).expand(3), LR, order="first")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _toy_module():
    m = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "rpn": torch.nn.Linear(2, 2),
                             "stem": torch.nn.Linear(2, 2)})
    for p in m["stem"].parameters():
        p.requires_grad_(False)
    return m


def test_select_params():
    m = _toy_module()
    everything = select_params(m.named_parameters(), [])
    assert list(everything) == ["backbone.weight", "backbone.bias", "rpn.weight", "rpn.bias"]
    assert everything["rpn.bias"] is m["rpn"].bias
    sel = select_params(m.named_parameters(), [r"^backbone\.", r"rpn\.bias$"])
    assert list(sel) == ["backbone.weight", "backbone.bias", "rpn.bias"]
    assert list(select_params(dict(m.named_parameters()), r"weight")) == ["backbone.weight", "rpn.weight"]
    with pytest.raises(ValueError, match="roi_heads"):
        select_params(m.named_parameters(), [r"^backbone", r"roi_heads"])
    with pytest.raises(ValueError, match="only frozen"):
        select_params(m.named_parameters(), [r"^stem\."])
    with pytest.raises(ValueError, match="invalid regular expression"):
        select_params(m.named_parameters(), ["(unclosed"])
    with pytest.raises(ValueError, match="no trainable"):
        select_params(m["stem"].named_parameters(), [])


def test_resolve_direction():
    # the official loop starts with the detection loss as meta-train at iteration 0, then flips
    assert [resolve_direction("alternate", i) for i in range(4)] == \
        ["det_first", "align_first", "det_first", "align_first"]
    assert resolve_direction("det_first", 0) == "det_first"
    assert resolve_direction("align_first", 7) == "align_first"
    with pytest.raises(ValueError, match="direction"):
        resolve_direction("both", 0)
    with pytest.raises(ValueError, match="iteration"):
        resolve_direction("alternate", -1)
    with pytest.raises(ValueError, match="iteration"):
        resolve_direction("alternate", True)


def test_step_module_needs_no_detectron2(monkeypatch):
    """The meta package (step.py and the modules it uses) must load with detectron2 and the rest of
    metaalign_det unavailable."""
    for name in ("detectron2", "metaalign_det"):
        monkeypatch.setitem(sys.modules, name, None)  # makes any import of them raise ImportError
    folder = os.path.dirname(step_mod.__file__)
    spec = importlib.util.spec_from_file_location("isolated_meta", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    pkg = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "isolated_meta", pkg)  # its relative imports resolve under this name
    try:
        spec.loader.exec_module(pkg)
        mod = pkg.step
        grads, _ = mod.meta_align_grads(make_params(), align_loss, det_loss, LR, order="first")
    finally:
        for name in [n for n in sys.modules if n.startswith("isolated_meta.")]:
            del sys.modules[name]
    assert_grads_close(grads, reference(make_params(), "align_first", LR, second=False))


# ---- fast-weight subset (META.PARAMS) ----------------------------------------------------------------
def _fast_subset_reference(params, inner, outer, lr, fast, order):
    names = list(params)
    theta = [params[k].detach().clone().requires_grad_(True) for k in names]
    p = dict(zip(names, theta))
    l_in = inner(p)
    g1 = torch.autograd.grad(l_in, theta, create_graph=(order == "second"), retain_graph=True,
                             allow_unused=True)
    g1 = [torch.zeros_like(t) if g is None else g for g, t in zip(g1, theta)]
    if order == "first":
        g1 = [g.detach() for g in g1]
    prime = {k: (t - lr * g) if k in fast else t for k, t, g in zip(names, theta, g1)}
    total = l_in + outer(prime)
    grads = torch.autograd.grad(total, theta, allow_unused=True)
    return {k: torch.zeros_like(t) if g is None else g for k, t, g in zip(names, theta, grads)}


@pytest.mark.parametrize("order", ["first", "second"])
def test_fast_subset_matches_reference(order):
    torch.manual_seed(3)
    params = {"a": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64),
              "c": torch.randn(3, 2, dtype=torch.float64)}
    x = torch.randn(5, 4, dtype=torch.float64)

    def align(p):
        return torch.tanh(x @ p["a"] + p["b"]).pow(2).mean() + (p["c"] ** 2).sum() * 0.1

    def det(p):
        return torch.sigmoid(torch.tanh(x @ p["a"]) @ p["c"]).sum()

    fast = {"a", "c"}
    grads, _ = meta_align_grads(params, align, det, 0.3, order=order, hvp="double_backward", fast=fast)
    ref = _fast_subset_reference(params, align, det, 0.3, fast, order)
    for k in params:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="fast names parameters not in params"):
        meta_align_grads(params, align, det, 0.3, fast={"nope"})


# ----------------------------------------------------------------------------------------------------
# reductions (grad_cos terms, finite check)
# ----------------------------------------------------------------------------------------------------
def test_cos_terms_match_float64_reference_with_mixed_dtypes():
    g = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), (2, 2, 3), (7,), (0,)]
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float32]
    a = [torch.randn(s, generator=g).to(dt) for s, dt in zip(shapes, dtypes)]
    d = [torch.randn(s, generator=g).to(dt) for s, dt in zip(shapes, dtypes)]
    touched_a = [True, True, True, False, True]
    touched_d = [True, False, True, True, True]
    terms = grad_stats_mod._cos_terms(a, d, touched_a, touched_d)
    shared = [i for i in range(len(a)) if touched_a[i] and touched_d[i]]
    flat = lambda ts: torch.cat([t.double().reshape(-1) for t in ts])  # noqa: E731
    ref = {
        "dot": flat([a[i] for i in shared]) @ flat([d[i] for i in shared]),
        "aa_shared": flat([a[i] for i in shared]).square().sum(),
        "dd_shared": flat([d[i] for i in shared]).square().sum(),
        "aa": flat(a).square().sum(),
        "dd": flat(d).square().sum(),
    }
    for k, v in ref.items():
        assert terms[k].dtype == torch.float64
        # half-precision inputs are exact in fp32; only the fp32 accumulation rounds
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-6), k
    # an fp16 tensor whose squared norm overflows fp16 is accumulated in fp32
    big = [torch.full((4,), 60000.0, dtype=torch.float16)]
    big_terms = grad_stats_mod._cos_terms(big, big, [True], [True])
    assert big_terms["aa"].item() == pytest.approx(4 * 60000.0 ** 2, rel=1e-6)


def test_all_finite_checks_every_element():
    ok = [torch.tensor([1.0, -2.0]), torch.zeros(0), torch.tensor([3e38, -3e38])]  # a 2-norm would overflow
    assert grad_stats_mod._all_finite(ok)
    assert grad_stats_mod._all_finite([torch.tensor([60000.0], dtype=torch.float16)] * 3)
    for bad in (float("nan"), float("inf"), -float("inf")):
        tensors = ok + [torch.tensor([1.0, bad])]
        assert not grad_stats_mod._all_finite(tensors), bad
        assert not grad_stats_mod._all_finite([torch.tensor([bad], dtype=torch.bfloat16)] + ok), bad
