"""metaalign_det.meta.grad_stats: the fused (``torch._foreach_*``) statistics equal the per-parameter loop,
which stays as the reference; finite flags and the one-copy read of a stats dict."""
import math

import pytest
import torch

from metaalign_det.meta import grad_stats


def _lists(seed, shapes, dtypes, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = [(torch.randn(s, generator=g) * scale).to(dt) for s, dt in zip(shapes, dtypes)]
    d = [(torch.randn(s, generator=g) * scale).to(dt) for s, dt in zip(shapes, dtypes)]
    return a, d


SHAPES = [(4, 3), (5,), (2, 2, 3), (7,), (0,), (64, 33), (1,)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float32, torch.float32,
          torch.float32]


@pytest.mark.parametrize("touched", [
    ([True] * 7, [True] * 7),                       # everything shared
    ([True, True, True, False, True, True, False], [True, False, True, True, True, True, True]),
    ([True] * 7, [False] * 7),                      # nothing shared: dot and shared norms are 0
])
def test_fused_cos_terms_equal_the_loop(touched):
    a, d = _lists(3, SHAPES, DTYPES)
    loop = grad_stats._cos_terms(a, d, *touched, fused=False)
    fused = grad_stats._cos_terms(a, d, *touched, fused=True)
    assert loop.keys() == fused.keys()
    for k in loop:
        assert fused[k].dtype == torch.float64 and fused[k].shape == ()
        # the loop accumulates each dot in fp32, the fused path in float64: equal to fp32 rounding
        assert fused[k].item() == pytest.approx(loop[k].item(), rel=1e-6, abs=1e-9), k


def test_fused_cos_terms_match_float64_reference_more_closely():
    """Large fp32 gradients: the fused dot rounds only its products (fp32) and sums in float64."""
    a, d = _lists(5, [(4096, 64)] * 3, [torch.float32] * 3, scale=1e3)
    d = [x + 0.05 * y for x, y in zip(d, a)]
    touched = [True] * 3
    ref = sum(float(x.double().reshape(-1) @ y.double().reshape(-1)) for x, y in zip(a, d))
    norms = math.sqrt(sum(float(x.double().square().sum()) for x in a) *
                      sum(float(y.double().square().sum()) for y in d))
    fused = grad_stats._cos_terms(a, d, touched, touched, fused=True)["dot"].item()
    loop = grad_stats._cos_terms(a, d, touched, touched, fused=False)["dot"].item()
    assert abs(fused - ref) / norms < 1e-9
    assert abs(loop - ref) / norms < 1e-5
    assert abs(fused - ref) <= abs(loop - ref)


def test_fused_dot_of_fp16_gradients_does_not_overflow():
    big = [torch.full((4,), 60000.0, dtype=torch.float16)]
    terms = grad_stats._cos_terms(big, big, [True], [True], fused=True)
    assert terms["dot"].item() == pytest.approx(4 * 60000.0 ** 2, rel=1e-6)
    assert terms["aa"].item() == pytest.approx(4 * 60000.0 ** 2, rel=1e-6)


@pytest.mark.parametrize("fused", [False, True, None])  # reference loop, fused norms, CPU min/max
def test_finite_flag_checks_every_element(fused):
    ok = [torch.tensor([1.0, -2.0]), torch.zeros(0), torch.tensor([3e38, -3e38]),
          torch.tensor([60000.0], dtype=torch.float16), torch.tensor([1e300], dtype=torch.float64)]
    flag = grad_stats.finite_flag(ok, fused=fused)
    assert flag.dtype == torch.bool and flag.shape == () and bool(flag)
    assert bool(grad_stats.finite_flag([torch.zeros(0)], fused=fused))
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            tensors = ok + [torch.tensor([1.0, bad], dtype=dt)]
            assert not bool(grad_stats.finite_flag(tensors, fused=fused)), (bad, dt)


def test_fused_and_loop_agree_on_non_finite_terms():
    a, d = _lists(7, SHAPES, DTYPES)
    a[0][1, 1] = float("nan")
    touched = [True] * len(a)
    for k in ("dot", "aa", "aa_shared"):
        assert math.isnan(grad_stats._cos_terms(a, d, touched, touched, fused=True)[k].item()), k
        assert math.isnan(grad_stats._cos_terms(a, d, touched, touched, fused=False)[k].item()), k
    assert grad_stats._cos_terms(a, d, touched, touched, fused=True)["dd"].item() == pytest.approx(
        grad_stats._cos_terms(a, d, touched, touched, fused=False)["dd"].item(), rel=1e-6)


def test_global_sq_norm_fused_equals_loop_and_keeps_no_graph():
    a, _ = _lists(9, SHAPES, DTYPES)
    leaves = [t.float().requires_grad_(True) for t in a]
    fused = grad_stats._global_sq_norm(leaves, fused=True)
    loop = grad_stats._global_sq_norm(leaves, fused=False)
    assert not fused.requires_grad and fused.dtype == torch.float64
    assert fused.item() == pytest.approx(loop.item(), rel=1e-6)


def test_materialize_stats_reads_tensors_once_and_keeps_the_rest():
    stats = {"grad_cos": torch.tensor(0.25, dtype=torch.float64), "finite": torch.tensor(True),
             "align_loss": torch.tensor(1.5), "order": "first", "inner_lr": 0.1, "hvp": None}
    out = grad_stats.materialize_stats(stats)
    assert out == {"grad_cos": 0.25, "finite": True, "align_loss": 1.5, "order": "first", "inner_lr": 0.1,
                   "hvp": None}
    assert type(out["finite"]) is bool and type(out["grad_cos"]) is float
    assert torch.is_tensor(stats["grad_cos"])  # the input is not modified
