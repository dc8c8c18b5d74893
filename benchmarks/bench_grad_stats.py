#!/usr/bin/env python3
"""Cost and accuracy of the per-step gradient statistics of the MetaAlign step (grad_cos terms + finite check).

    python benchmarks/bench_grad_stats.py                 # CPU, R50-C4 + DA heads parameter shapes
    python benchmarks/bench_grad_stats.py --device cuda

Every MetaAlign step computes, over all trainable parameters: "all finite" of the inner gradient g1, the
grad_cos terms (<g_align, g_det> and squared norms, over all and over shared parameters) and "all finite" of
the returned gradient. ``metaalign_det.meta.grad_stats`` runs them as a per-parameter loop (``torch.dot`` in fp32
per tensor summed in float64, ``isfinite(t).all()`` per tensor: several small kernels per parameter), timed
below through its own helpers. The candidate replaces it with ``torch._foreach_norm`` accumulated in float64
(one fused kernel per dtype group on CUDA; per-parameter norms reused for the finite check and every
squared norm; a float64 norm is finite exactly when every element is) and a few dots of concatenated
4M-element chunks. Both do one step's work on the same random gradients with the detector's real parameter
shapes and are compared with a float64 reference. Prints one Markdown table. On 2 CPU cores neither wins
clearly (docs/benchmarks.md), so the step keeps the loop until a GPU run of this script says otherwise.
"""
import argparse
import statistics
import time

import torch
from common import preset_cfg
from detectron2.modeling import build_model

from metaalign_det.meta import grad_stats as grad_stats_mod


def loop(g1, g2):
    """The step's own helpers: isfinite(g1), the grad_cos terms, isfinite of the result (here g1)."""
    ok = grad_stats_mod._all_finite(g1)
    touched = [True] * len(g1)
    t = grad_stats_mod._cos_terms(g1, g2, touched, touched)
    fin_total = grad_stats_mod._all_finite(g1)
    vals = torch.stack([t["dot"], t["aa"], t["dd"], t["aa_shared"] + t["dd_shared"]]).tolist()
    return vals[:3] + [float(ok and fin_total)]


CHUNK = 1 << 22  # elements per concatenated dot: bounds the transient copy to 2 x 16 MiB (fp32)


def _norms64(tensors):
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))


def _dot_chunks(a, b):
    parts, xs, ys, n = [], [], [], 0
    for i, (x, y) in enumerate(zip(a, b)):
        xs.append(x.reshape(-1))
        ys.append(y.reshape(-1))
        n += x.numel()
        if n >= CHUNK or i == len(a) - 1:
            parts.append(torch.dot(torch.cat(xs), torch.cat(ys)).double())
            xs, ys, n = [], [], 0
    return torch.stack(parts).sum()


def fused_candidate(g1, g2):
    """The same work with fused float64 norms (computed once per list) and chunked dots."""
    n1 = _norms64(g1)
    ok = bool(torch.isfinite(n1.sum()))
    n2 = _norms64(g2)
    sq1, sq2 = n1.square(), n2.square()
    shared = torch.arange(len(g1), device=n1.device)  # every parameter is shared here
    fin_total = torch.isfinite(_norms64(g1).sum())
    vals = torch.stack([_dot_chunks(g1, g2), sq1.sum(), sq2.sum(), sq1[shared].sum() + sq2[shared].sum(),
                        fin_total.double()]).tolist()
    return vals[:3] + [float(ok and vals[4] == 1.0)]


def reference64(g_align, g_det):
    a = torch.cat([t.double().reshape(-1) for t in g_align])
    d = torch.cat([t.double().reshape(-1) for t in g_det])
    return [(a @ d).item(), (a @ a).item(), (d @ d).item()]


def time_it(fn, args, repeats, device):
    out = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)  # ends in .item()/.tolist(): a host sync, as in the step
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="gpu", choices=["gpu", "cpu"],
                    help="gpu: R50-C4 + DA heads (default, also on CPU); cpu: the quick R18-FPN")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    cfg = preset_cfg(args.preset, args.device)
    model = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator(device=args.device).manual_seed(0)
    g_align = [torch.randn(p.shape, generator=g, device=args.device) for p in params]
    g_det = [torch.randn(p.shape, generator=g, device=args.device) for p in params]
    n_elem = sum(p.numel() for p in params)
    ref = reference64(g_align, g_det)

    rows = []
    for label, fn in (("per-parameter loop (the step)", loop),
                      ("fused `_foreach_norm` fp64 + chunked dots (candidate)", fused_candidate)):
        vals = fn(g_align, g_det)
        # error of the cosine terms relative to the norms (what grad_cos / the logged norms see)
        scale = (ref[1] * ref[2]) ** 0.5
        err = max(abs(vals[0] - ref[0]) / scale, abs(vals[1] - ref[1]) / ref[1], abs(vals[2] - ref[2]) / ref[2])
        if vals[3] != 1.0:
            raise SystemExit(f"bench_grad_stats: {label} calls finite gradients non-finite")
        fn(g_align, g_det)  # warm-up
        rows.append((label, time_it(fn, (g_align, g_det), args.repeats, args.device), err))

    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{dev_name}, torch {torch.__version__}, {len(params)} parameter tensors, {n_elem / 1e6:.1f} M "
          f"elements, median of {args.repeats}\n")
    print("| gradient statistics | ms per step | max rel. error vs float64 |")
    print("|---|---|---|")
    for label, ms, err in rows:
        print(f"| {label} | {ms:.2f} | {err:.1e} |")


if __name__ == "__main__":
    main()
