"""Gradient reversal: identity forward, -lambda * grad backward, also under torch.func."""
import pytest
import torch
from torch import nn

import metaalign_det  # noqa: F401
from metaalign_det.modeling.grl import GradientReversal, grad_reverse


def test_forward_is_identity():
    x = torch.randn(2, 3, 4, 5)
    y = GradientReversal(0.1)(x)
    assert torch.equal(y, x)
    assert y.shape == x.shape


@pytest.mark.parametrize("lam", [0.1, 1.0, 2.5])
def test_backward_is_minus_lambda_times_grad(lam):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 4, dtype=torch.float64)
    (GradientReversal(lam)(x) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, -lam * upstream)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_gradcheck_float64(lam):
    # gradcheck compares autograd with finite differences of the forward, which for a GRL differ by design
    # (-lambda vs 1). The added term s(x) - s(x).detach() is 0 in value and adds (1 + lambda) * s'(x) to the
    # gradient, so the composite passes iff the GRL's backward is exactly -lambda * s'(x) (s = sin: non-linear).
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def composite(t):
        return torch.sin(grad_reverse(t, lam)) + (1.0 + lam) * (torch.sin(t) - torch.sin(t).detach())

    assert torch.autograd.gradcheck(composite, (x,))


def test_reverse_false_scales_without_reversing():
    x = torch.randn(5, requires_grad=True)
    GradientReversal(0.3)(x, reverse=False).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5,), 0.3))


def test_negative_weight_rejected():
    with pytest.raises(ValueError, match="weight"):
        GradientReversal(-1.0)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.grl = GradientReversal(0.5)
        self.lin = nn.Linear(4, 1)

    def forward(self, x):
        return self.lin(self.grl(x))


def test_composes_with_functional_call_and_func_grad():
    m = _Tiny().double()
    params = {k: torch.randn_like(v) for k, v in m.named_parameters()}  # substituted values, not the module's
    x = torch.randn(2, 4, dtype=torch.float64)

    def f(inp):
        return torch.func.functional_call(m, params, (inp,)).sum()

    g = torch.func.grad(f)(x)
    # d/dx sum(lin(x)) = W per row; through the GRL: -0.5 * W of the *substituted* weight
    expected = (-0.5 * params["lin.weight"]).expand(2, 4)
    torch.testing.assert_close(g, expected)
    # and via ordinary autograd through functional_call the substituted weight gets its gradient
    w = params["lin.weight"].clone().requires_grad_()
    out = torch.func.functional_call(m, {**params, "lin.weight": w}, (x,)).sum()
    out.backward()
    torch.testing.assert_close(w.grad, x.sum(0, keepdim=True))
