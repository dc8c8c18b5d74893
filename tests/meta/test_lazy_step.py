"""meta_align_grads(lazy_stats=True): no host read inside the step, the same gradients, statistics as device
tensors, and a non-finite inner gradient handled on the device (theta' = theta, never a non-finite theta')."""
import math

import pytest
import torch

from metaalign_det.meta import meta_align_grads
from metaalign_det.meta.grad_stats import materialize_stats
from metaalign_det.utils.host_sync import HostSyncCounter
from tests.meta.test_step import (
    LR,
    align_loss,
    assert_grads_close,
    det_loss,
    make_params,
)

CASES = [("none", "auto", "align_first"), ("first", "auto", "align_first"), ("first", "auto", "det_first"),
         ("second", "double_backward", "align_first"), ("second", "finite_difference", "align_first"),
         ("second", "finite_difference", "det_first")]


@pytest.mark.parametrize("order,hvp,direction", CASES)
def test_lazy_stats_give_the_same_gradients_and_stats(order, hvp, direction):
    params = make_params()
    kw = dict(order=order, hvp=hvp, direction=direction, compute_cos=True)
    eager_g, eager_s = meta_align_grads(params, align_loss, det_loss, LR, **kw)
    lazy_g, lazy_s = meta_align_grads(params, align_loss, det_loss, LR, lazy_stats=True, **kw)
    assert_grads_close(lazy_g, eager_g, rtol=1e-12, atol=1e-15)
    for k in ("grad_cos", "align_grad_norm", "det_grad_norm", "align_loss", "det_loss", "finite"):
        assert torch.is_tensor(lazy_s[k]) and lazy_s[k].shape == (), k
    read = materialize_stats(lazy_s)
    assert read.keys() == eager_s.keys()
    for k, v in eager_s.items():
        if isinstance(v, float):
            assert read[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
        else:
            assert read[k] == v, k


@pytest.mark.parametrize("order,hvp,direction", CASES)
def test_lazy_step_reads_nothing_to_the_host(order, hvp, direction):
    params = make_params()
    with HostSyncCounter() as syncs:
        meta_align_grads(params, align_loss, det_loss, LR, order=order, hvp=hvp, direction=direction,
                         compute_cos=True, lazy_stats=True)
    assert syncs.total() == 0, syncs.sites
    with HostSyncCounter() as eager:  # the counter is not vacuous: the eager step reads its stats
        meta_align_grads(params, align_loss, det_loss, LR, order=order, hvp=hvp, direction=direction)
    assert eager.total() >= 1


@pytest.mark.parametrize("hvp", ["double_backward", "finite_difference"])
def test_lazy_non_finite_inner_gradient_never_evaluates_a_non_finite_theta(hvp):
    params = make_params()
    seen, hook_calls = [], []

    def nan_align(p):
        seen.append(all(bool(torch.isfinite(v).all()) for v in p.values()))
        return align_loss(p) + (p["wa"] * float("nan")).sum()

    def det(p):
        seen.append(all(bool(torch.isfinite(v).all()) for v in p.values()))
        return det_loss(p)

    grads, stats = meta_align_grads(params, nan_align, det, LR, order="second", hvp=hvp,
                                    inner_grad_hook=hook_calls.append, lazy_stats=True)
    assert not bool(stats["finite"])
    assert torch.isnan(grads["wa"]).all()
    assert len(hook_calls) == 1
    assert len(seen) >= 2 and all(seen)  # theta' = theta and theta +- eps*0: every evaluation at finite values
    assert stats["det_loss"].item() == pytest.approx(det_loss(params).item())  # evaluated at theta


def test_lazy_second_order_with_zero_outer_gradient_has_no_hessian_term():
    params = make_params()

    def flat_det(p):  # touches the params, gradient exactly zero
        return (p["w2"] * 0.0).sum() + 1.0

    lazy, stats = meta_align_grads(params, align_loss, flat_det, LR, order="second",
                                   hvp="finite_difference", lazy_stats=True)
    eager, _ = meta_align_grads(params, align_loss, flat_det, LR, order="second", hvp="finite_difference")
    assert_grads_close(lazy, eager, rtol=0, atol=0)
    assert bool(stats["finite"]) and math.isnan(float(stats["grad_cos"]))
