#!/usr/bin/env python3
"""Cost and accuracy of the per-step gradient statistics of the MetaAlign step (grad_cos terms + finite check).

    python benchmarks/bench_grad_stats.py                 # CPU, R50-C4 + DA heads parameter shapes
    python benchmarks/bench_grad_stats.py --preset cpu    # CPU, the quick R18-FPN's shapes
    python benchmarks/bench_grad_stats.py --device cuda

Every MetaAlign step computes, over all trainable parameters: "all finite" of the inner gradient g1, the
grad_cos terms (<g_align, g_det> and squared norms, over all and over the shared parameters, here the shared
set is half of the parameters) and "all finite" of the returned gradient, and reads them once at the end.
``metaalign_det.meta.grad_stats`` has two implementations, compared here through its own functions:

* loop: per parameter ``torch.dot`` in fp32 summed in float64 and ``isfinite(t).all()`` (several small kernels
  per parameter);
* fused: ``torch._foreach_norm`` in float64 (one multi-tensor kernel per list on CUDA), the dot from fused
  products (sum|p| - 2 sum max(-p, 0) in float64), norm-based finite checks.

The step picks the grad_cos terms' implementation per device type (``grad_stats.FUSED``) and the finite
check's too (CUDA: the fused norms; CPU: ``torch.aminmax`` per tensor): the third row. All run on the same
random gradients with the detector's real parameter shapes and are compared with a float64 reference.
Prints one Markdown table.
"""
import argparse
import statistics
import time

import torch
from common import emit_table, preset_cfg
from detectron2.modeling import build_model

from metaalign_det.meta import grad_stats


def step_stats(g1, g2, touched_a, touched_d, fused):
    """The step's statistics work: finite(g1), the cos terms, finite(result); one read at the end."""
    ok = grad_stats.finite_flag(g1, fused=fused)
    t = grad_stats._cos_terms(g1, g2, touched_a, touched_d, fused=fused)
    fin_total = grad_stats.finite_flag(g2, fused=fused)  # stands for the returned gradient
    vals = torch.stack([t["dot"], t["aa"], t["dd"], t["aa_shared"], t["dd_shared"],
                        (ok & fin_total).double()]).tolist()
    return vals


def reference64(g_align, g_det, shared):
    a = torch.cat([t.double().reshape(-1) for t in g_align])
    d = torch.cat([t.double().reshape(-1) for t in g_det])
    a_s = torch.cat([g_align[i].double().reshape(-1) for i in shared])
    d_s = torch.cat([g_det[i].double().reshape(-1) for i in shared])
    return [(a_s @ d_s).item(), (a @ a).item(), (d @ d).item(), (a_s @ a_s).item(), (d_s @ d_s).item()]


def time_it(fn, args, repeats, device):
    out = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)  # ends in .tolist(): a host sync, as the step's one read
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="gpu", choices=["gpu", "cpu"],
                    help="gpu: R50-C4 + DA heads (default, also on CPU); cpu: the quick R18-FPN")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--output", help="also write the Markdown table here")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's); 1 on a loaded "
                    "machine, where threads wait for each other at every operator")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = preset_cfg(args.preset, args.device)
    model = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator(device=args.device).manual_seed(0)
    g_align = [torch.randn(p.shape, generator=g, device=args.device) for p in params]
    g_det = [torch.randn(p.shape, generator=g, device=args.device) for p in params]
    touched_a = [True] * len(params)
    touched_d = [i % 2 == 0 for i in range(len(params))]
    shared = [i for i in range(len(params)) if touched_d[i]]
    n_elem = sum(p.numel() for p in params)
    ref = reference64(g_align, g_det, shared)

    variants = {"per-parameter loop": False, "fused `_foreach_*`": True,
                "the step's default here": None}
    times = {k: [] for k in variants}
    errors = {}
    for label, fused in variants.items():
        vals = step_stats(g_align, g_det, touched_a, touched_d, fused)
        if vals[5] != 1.0:
            raise SystemExit(f"bench_grad_stats: {label} calls finite gradients non-finite")
        # dot error relative to the norms (what grad_cos sees); squared norms relative to themselves
        scale = (ref[3] * ref[4]) ** 0.5
        errors[label] = max([abs(vals[0] - ref[0]) / scale] + [abs(vals[i] - ref[i]) / ref[i] for i in (1, 2, 3, 4)])
        step_stats(g_align, g_det, touched_a, touched_d, fused)  # warm-up
    # Blocks of consecutive runs per variant (the first untimed), the variants' order rotated from block to
    # block: a load change on a shared machine affects every variant alike, and no variant is timed right
    # after another one's large temporaries were freed (on CPU, the allocator hands big blocks back to the OS
    # and fresh pages fault in, which made interleaved single runs depend on the order).
    labels = list(variants)
    blocks = 3
    per_block = max(1, args.repeats // blocks)
    for b in range(blocks):
        for label in labels[b % len(labels):] + labels[:b % len(labels)]:
            times[label] += time_it(step_stats, (g_align, g_det, touched_a, touched_d, variants[label]),
                                    per_block + 1, args.device)[1:]

    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [f"{dev_name}, torch {torch.__version__}, preset {args.preset}: {len(params)} parameter tensors, "
             f"{n_elem / 1e6:.1f} M elements, median of {blocks * per_block} (3 blocks per variant, rotated); the "
             "step's grad_cos terms "
             f"use {'fused' if grad_stats.FUSED.get(torch.device(args.device).type, True) else 'the loop'} here", "",
             "| gradient statistics | ms per step | x loop | max rel. error vs float64 |", "|---|---|---|---|"]
    base = statistics.median(times["per-parameter loop"])
    for label in variants:
        ms = statistics.median(times[label])
        lines.append(f"| {label} | {ms:.2f} | {ms / base:.2f} | {errors[label]:.1e} |")
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
