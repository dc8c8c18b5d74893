"""StepBuffers: theta' (and theta +- eps v, the masked v) reused across steps give exactly the results of
fresh tensors, step after step; buffers are reused while the parameters keep their layout."""
import pytest
import torch

from metaalign_det.meta import meta_align_grads
from metaalign_det.meta.buffers import StepBuffers
from tests.meta.test_step import LR, align_loss, det_loss, make_params


def _train(order, hvp, lazy, buffers, fast=None, steps=4, lr=0.05, poison_at=None):
    """SGD on the toy problem; returns every step's gradients (and the params at the end)."""
    params = make_params(requires_grad=False)
    history = []
    for step in range(steps):
        align = align_loss
        if step == poison_at:  # a non-finite inner gradient in the middle (lazy: theta' = theta on device)
            def align(p):
                return align_loss(p) + (p["wa"] * float("nan")).sum()
        grads, stats = meta_align_grads(params, align, det_loss, LR, order=order, hvp=hvp, fast=fast,
                                        lazy_stats=lazy, buffers=buffers)
        history.append({k: g.clone() for k, g in grads.items()})
        if step != poison_at:
            params = {k: v - lr * grads[k] for k, v in params.items()}
    return history


@pytest.mark.parametrize("order,hvp", [("first", "auto"), ("second", "finite_difference"),
                                       ("second", "double_backward")])
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("fast", [None, {"w1", "wa"}])
def test_reused_buffers_equal_fresh_allocation_over_several_steps(order, hvp, lazy, fast):
    reused = StepBuffers()
    poison = 2 if lazy else None
    fresh = _train(order, hvp, lazy, None, fast=fast, poison_at=poison)
    again = _train(order, hvp, lazy, reused, fast=fast, poison_at=poison)
    assert len(fresh) == len(again) == 4
    for step, (a, b) in enumerate(zip(fresh, again)):
        for k in a:
            assert torch.equal(a[k], b[k]) or (step == poison and torch.equal(a[k].isnan(), b[k].isnan())), \
                (step, k)
    assert reused.nbytes() > 0


def test_buffers_are_reused_while_the_layout_holds():
    buffers = StepBuffers()
    like = [torch.zeros(3, 2), torch.zeros(4, dtype=torch.float64)]
    first = buffers.get("theta_prime", like)
    assert [t.shape for t in first] == [(3, 2), (4,)] and [t.dtype for t in first] == [torch.float32,
                                                                                         torch.float64]
    assert not any(t.requires_grad for t in first)
    again = buffers.get("theta_prime", [torch.ones(3, 2), torch.ones(4, dtype=torch.float64)])
    assert all(a is b for a, b in zip(first, again))  # same tensors, no allocation
    other = buffers.get("v", like)
    assert all(a is not b for a, b in zip(first, other))  # slots are independent
    changed = buffers.get("theta_prime", [torch.zeros(3, 3), torch.zeros(4, dtype=torch.float64)])
    assert changed[0].shape == (3, 3) and changed[0] is not first[0]
    assert buffers.nbytes() == (9 * 4 + 4 * 8) + (6 * 4 + 4 * 8)
    buffers.clear()
    assert buffers.nbytes() == 0


def test_step_writes_theta_prime_into_the_buffers():
    params = make_params()
    buffers = StepBuffers()
    meta_align_grads(params, align_loss, det_loss, LR, order="first", buffers=buffers)
    held = buffers.get("theta_prime", list(params.values()))
    ptrs = [t.data_ptr() for t in held]
    seen = []

    def det(p):
        seen.append([t.data_ptr() for t in p.values()])
        return det_loss(p)

    meta_align_grads(params, align_loss, det, LR, order="first", buffers=buffers)
    assert seen == [ptrs]  # theta' lives in the held tensors
