"""Gradient statistics of the meta step: the finite check, squared norms, and the cosine of the alignment and
detection gradients (``grad_cos``), accumulated in float64 on the device.

Nothing here reads a value to the host except :func:`materialize_stats` (one device->host copy for a whole
stats dict) and the ``_all_finite`` / ``_global_norm`` helpers of the host-synchronous path: on a GPU every
such read stalls the host until the queued kernels have run, so the trainer keeps the statistics on the
device and reads them only when they are logged.

Tensors are lists with one gradient per parameter (any float dtype; fp16/bf16 are accumulated in fp32).
"""
import math
from typing import Dict, List, Mapping, Optional

import torch

__all__ = ["finite_flag", "materialize_stats", "FUSED"]

# Per device type: compute the grad_cos terms with fused multi-tensor kernels (``torch._foreach_*``: a handful
# of launches for all parameters) instead of a per-parameter loop (several small kernels per parameter). A GPU
# pays a launch (and Python) overhead per kernel, so fused is the default there; on CPU each "launch" is a
# function call and the fused dot product makes extra passes over memory, so the loop is kept where
# benchmarks/bench_grad_stats.py did not find the fused path at least as fast (docs/benchmarks.md). Both give
# the same values (the fused dot and norms accumulate in float64; see tests/meta/test_grad_stats.py).
# The same switch picks the finite check's implementation (finite_flag).
FUSED = {"cuda": True, "cpu": False}


def _all_finite(tensors: List[torch.Tensor]) -> bool:
    """One host sync for the whole list."""
    return bool(finite_flag(tensors).item())


def _use_fused(tensors: List[torch.Tensor], fused: Optional[bool]) -> bool:
    return FUSED.get(tensors[0].device.type, True) if fused is None else bool(fused)


def finite_flag(tensors: List[torch.Tensor], fused: Optional[bool] = None) -> torch.Tensor:
    """0-d bool tensor on the first tensor's device: every element of every tensor is finite. No host sync.

    Exact for every float dtype; empty tensors count as finite. ``fused``:

    * None (default): per device, by :data:`FUSED`. Fused devices (CUDA): the norms below. Others (CPU):
      ``torch.aminmax`` per tensor (one pass, no temporary; NaN propagates to both, an infinity shows as the
      min or max), ~10x faster there than ``isfinite`` (three elementwise passes and a bool tensor per
      parameter) and than float64 norms (which convert each tensor to a float64 copy on CPU).
    * True: per-tensor norms, one multi-tensor kernel per list on CUDA -- the float64 2-norm for
      fp32/fp16/bf16 tensors (finite exactly when every element is: squares of finite fp32 values cannot
      overflow float64) and the max-abs norm for float64 tensors.
    * False: the per-tensor ``isfinite(t).all()`` loop, kept as the reference.
    """
    if fused is False:
        flags = [torch.isfinite(t).all().to(tensors[0].device) for t in tensors]
        return torch.stack(flags).all()
    nonempty = [t.detach() for t in tensors if t.numel()]  # min/max/norms of empty tensors are undefined
    if not nonempty:
        return torch.ones((), dtype=torch.bool, device=tensors[0].device)
    if not _use_fused(nonempty, fused):
        return torch.isfinite(torch.stack([x for t in nonempty for x in torch.aminmax(t)])).all()
    narrow = [t for t in nonempty if t.dtype != torch.float64]
    wide = [t for t in nonempty if t.dtype == torch.float64]
    norms = list(torch._foreach_norm(narrow, 2, dtype=torch.float64)) if narrow else []
    if wide:  # NaN and inf propagate through max |x|; a float64 sum of squares could overflow
        norms += list(torch._foreach_norm(wide, float("inf")))
    return torch.isfinite(torch.stack(norms)).all()


def _norms64(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """L2 norm of each tensor, accumulated in float64 (0-d tensors); one fused kernel on CUDA."""
    return list(torch._foreach_norm([t.detach() for t in tensors], 2, dtype=torch.float64))


def _acc(t: torch.Tensor) -> torch.Tensor:
    """View of ``t`` in a dtype fit for accumulating norms/dots (fp16/bf16 -> fp32), flattened."""
    t = t.detach().reshape(-1)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _sum64(terms: List[torch.Tensor], device) -> torch.Tensor:
    if not terms:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack([x.to(device=device, dtype=torch.float64) for x in terms]).sum()


def _cos_terms(g_align, g_det, t_align, t_det, fused: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """0-d float64 tensors: <a,d>, ||a||^2, ||d||^2 over shared params, and the full squared norms.

    ``t_align``/``t_det``: per parameter, whether that loss touches it (shared = both). ``fused``: None = per
    device, see :data:`FUSED`; False is the per-parameter loop (the reference).
    """
    if _use_fused(g_align, fused):
        return _cos_terms_fused(g_align, g_det, t_align, t_det)
    dev = g_align[0].device
    shared = [i for i in range(len(g_align)) if t_align[i] and t_det[i]]
    # one squared norm per parameter, summed over both index sets (not recomputed for the shared subset)
    sq_a = [torch.dot(_acc(g), _acc(g)) for g in g_align]
    sq_d = [torch.dot(_acc(g), _acc(g)) for g in g_det]
    return {
        "dot": _sum64([torch.dot(_acc(g_align[i]), _acc(g_det[i])) for i in shared], dev),
        "aa_shared": _sum64([sq_a[i] for i in shared], dev),
        "dd_shared": _sum64([sq_d[i] for i in shared], dev),
        "aa": _sum64(sq_a, dev),
        "dd": _sum64(sq_d, dev),
    }


def _cos_terms_fused(g_align, g_det, t_align, t_det) -> Dict[str, torch.Tensor]:
    """:func:`_cos_terms` with multi-tensor kernels: float64 norms (one launch per list) and the shared dot
    from the products p = a * d (one launch, rounded in fp32) as sum|p| - 2 sum max(-p, 0) (two float64
    1-norms around one in-place clamp): only the products round in fp32; the sums are float64, whereas the
    loop accumulates each parameter's dot in fp32."""
    dev = g_align[0].device
    shared = [i for i in range(len(g_align)) if t_align[i] and t_det[i]]
    na, nd = _norms64(g_align), _norms64(g_det)
    zero = torch.zeros((), dtype=torch.float64, device=dev)

    def sq_sum(norms, idx=None):
        picked = norms if idx is None else [norms[i] for i in idx]
        return torch.stack(picked).square().sum() if picked else zero

    dot = zero
    if shared:
        # products in fp32 at least (fp16 products overflow at |a d| > 65504), as the loop's dot
        prod = torch._foreach_mul([_acc(g_align[i]) for i in shared], [_acc(g_det[i]) for i in shared])
        l1 = torch.stack(torch._foreach_norm(prod, 1, dtype=torch.float64)).sum()
        torch._foreach_clamp_max_(prod, 0.0)
        neg = torch.stack(torch._foreach_norm(prod, 1, dtype=torch.float64)).sum()
        dot = l1 - 2.0 * neg
        del prod
    return {"dot": dot, "aa_shared": sq_sum(na, shared), "dd_shared": sq_sum(nd, shared),
            "aa": sq_sum(na), "dd": sq_sum(nd)}


def _stats_tensors(cos_terms, align_val, det_val, finite: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The step's statistics as 0-d tensors on the gradients' device (float64; ``finite`` bool). No sync.

    ``cos_terms``: :func:`_cos_terms` output or None (statistics not computed: NaN).
    """
    dev = finite.device
    nan = torch.full((), float("nan"), dtype=torch.float64, device=dev)
    c = {k: nan for k in ("dot", "aa_shared", "dd_shared", "aa", "dd")} if cos_terms is None else cos_terms
    denom = c["aa_shared"].sqrt() * c["dd_shared"].sqrt()
    # NaN denominators compare False, so an undefined cosine is NaN, never +-inf
    cos = torch.where(denom > 0, c["dot"] / denom, nan)
    return {
        "grad_cos": cos,
        "align_grad_norm": c["aa"].sqrt(),
        "det_grad_norm": c["dd"].sqrt(),
        "align_loss": align_val.detach().to(device=dev, dtype=torch.float64).reshape(()),
        "det_loss": det_val.detach().to(device=dev, dtype=torch.float64).reshape(()),
        "finite": finite,
    }


def materialize_stats(stats: Mapping) -> dict:
    """A copy of ``stats`` with every 0-d tensor value read to a python float (bool tensors: bool), all in
    ONE device->host copy; other values are kept as they are."""
    keys = [k for k, v in stats.items() if torch.is_tensor(v)]
    out = dict(stats)
    if not keys:
        return out
    dev = stats[keys[0]].device
    vals = torch.stack([stats[k].detach().reshape(()).to(device=dev, dtype=torch.float64)
                        for k in keys]).tolist()
    for k, v in zip(keys, vals):
        out[k] = bool(v) if stats[k].dtype == torch.bool else v
    return out


def _finish_stats(cos_terms, align_val, det_val, grads) -> dict:
    """Every scalar statistic as python values, read with a single device->host copy."""
    return materialize_stats(_stats_tensors(cos_terms, align_val, det_val, finite_flag(grads)))


def _global_norm(tensors: List[torch.Tensor]) -> float:
    return math.sqrt(_global_sq_norm(tensors).item())


def _global_sq_norm(tensors: List[torch.Tensor], fused: Optional[bool] = None) -> torch.Tensor:
    """Squared L2 norm of all tensors together, 0-d float64 on the first tensor's device. No sync."""
    if _use_fused(tensors, fused):
        return torch.stack(_norms64(tensors)).square().sum()
    dev = tensors[0].device
    return _sum64([torch.dot(_acc(t), _acc(t)) for t in tensors], dev)
