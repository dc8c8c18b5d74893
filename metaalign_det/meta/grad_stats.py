"""Gradient statistics of the meta step: the finite check, squared norms, and the cosine of the alignment and
detection gradients (``grad_cos``), accumulated in float64 and read with a single device->host copy.

Tensors are lists with one gradient per parameter (any float dtype; fp16/bf16 are accumulated in fp32).
"""
import math
from typing import Dict, List

import torch


def _all_finite(tensors: List[torch.Tensor]) -> bool:
    """One host sync for the whole list."""
    flags = [torch.isfinite(t).all().to(tensors[0].device) for t in tensors]
    return bool(torch.stack(flags).all().item())


def _acc(t: torch.Tensor) -> torch.Tensor:
    """View of ``t`` in a dtype fit for accumulating norms/dots (fp16/bf16 -> fp32), flattened."""
    t = t.detach().reshape(-1)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _sum64(terms: List[torch.Tensor], device) -> torch.Tensor:
    if not terms:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack([x.to(device=device, dtype=torch.float64) for x in terms]).sum()


def _cos_terms(g_align, g_det, t_align, t_det) -> Dict[str, torch.Tensor]:
    """0-d float64 tensors: <a,d>, ||a||^2, ||d||^2 over shared params, and the full squared norms."""
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


def _finish_stats(cos_terms, align_val, det_val, grads) -> dict:
    """Read every scalar statistic with a single device->host copy."""
    dev = grads[0].device
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=dev)
    finite = torch.stack([torch.isfinite(g).all().to(dev) for g in grads]).all()
    if cos_terms is None:
        c = {k: nan for k in ("dot", "aa_shared", "dd_shared", "aa", "dd")}
    else:
        c = cos_terms
    vals = torch.stack([
        c["dot"], c["aa_shared"], c["dd_shared"], c["aa"], c["dd"],
        align_val.detach().to(device=dev, dtype=torch.float64),
        det_val.detach().to(device=dev, dtype=torch.float64),
        finite.to(torch.float64),
    ]).tolist()
    dot, aa_s, dd_s, aa, dd, l_align, l_det, fin = vals
    denom = math.sqrt(aa_s) * math.sqrt(dd_s) if aa_s == aa_s and dd_s == dd_s else float("nan")
    cos = dot / denom if denom > 0 else float("nan")
    return {
        "grad_cos": cos,
        "align_grad_norm": math.sqrt(aa) if aa == aa else float("nan"),
        "det_grad_norm": math.sqrt(dd) if dd == dd else float("nan"),
        "align_loss": l_align,
        "det_loss": l_det,
        "finite": bool(fin),
    }


def _global_norm(tensors: List[torch.Tensor]) -> float:
    dev = tensors[0].device
    return math.sqrt(_sum64([torch.dot(_acc(t), _acc(t)) for t in tensors], dev).item())
