#!/usr/bin/env python3
"""Trainer overhead: our training step vs the model's bare step, per mode, measured in one process.

    python benchmarks/bench_overhead.py --threads 1            # CPU proxy: quick R18-FPN, 64x64, 2+2 images
    python benchmarks/bench_overhead.py --device cuda --preset gpu   # R50-C4 at 600x1200 (GPU suite)
    python benchmarks/bench_overhead.py --threads 1 --profile out/profiles [--fused-stats]
        # + torch.profiler traces of one bare and one trainer step per mode (chrome trace JSON, top operators)

The *bare* step is the model's own computation for the mode written as plain torch, nothing else: the
forward/backward passes, the inner step and the optimizer step, without statistics, finite checks, logging,
RNG forking or the step trainer's bookkeeping:

* joint: ``sum(model(source, target).values()).backward()``, ``optimizer.step()``
* first order: grad L_align at θ, θ' = θ - α g1 (``functional_call``), grad L_det at θ', p.grad = g1 + g2, step
* second order: as first order, plus the central finite-difference Hessian-vector product (2 more passes)

The *trainer* step is ``MetaAlignSimpleTrainer.run_step`` (every META.MODE through ``meta_align_grads``) on
the same batch (held in memory, no loader). Each model is a copy of the same initial weights. Bare and trainer
steps alternate within each round, so that a load change on a shared machine affects both alike; the table
reports medians and the ratio trainer / bare. On a tiny model (64x64 images on CPU) the per-step overhead
dominates the compute, which makes this a proxy for the launch-bound GPU case. Syncs: the step trainer's
host reads per step outside the model's forward (``metaalign_det.utils.host_sync``), on a non-logging step.
Profile: wall and operator time of one step, and its *kernel-level* operator calls -- what a GPU would
launch (innermost computing operators, a ``_foreach_*`` call once) -- a CPU-side count of the per-kernel
launch overhead; ``--fused-stats`` forces the CUDA code path of the gradient statistics on CPU. Peak memory
(CUDA only) counts everything allocated, both models included.
"""
import argparse
import copy
import json
import os
import statistics
import time

import torch
from common import Repeat, emit_table, preset_cfg, synthetic_batch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from metaalign_det.engine import loss_evaluator
from metaalign_det.engine.train_loop import MetaAlignSimpleTrainer, MetaAlignStepOptions

try:
    from metaalign_det.utils.host_sync import HostSyncCounter
except ImportError:  # a checkout without the counter: no sync column
    HostSyncCounter = None

MODES = {"joint": "none", "first order": "first_order", "second order": "second_order"}
INNER_LR_SCALE = 10.0
FD_EPS = 1e-3


def _split(out):
    det = {k: v for k, v in out.items() if not k.startswith("loss_da_")}
    align = {k: v for k, v in out.items() if k.startswith("loss_da_")}
    return det, align


class BareStep:
    """The mode's computation with nothing around it (see the module docstring)."""

    def __init__(self, model, optimizer, mode, source, target):
        self.model, self.optimizer, self.mode = model, optimizer, mode
        self.source, self.target = source, target
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _losses(self, values, with_target):
        p = dict(zip(self.names, values))
        out = torch.func.functional_call(self.model, p, (self.source, self.target if with_target else None))
        return _split(out)

    def _grad(self, loss, leaves):
        g = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [torch.zeros_like(x) if gi is None else gi for x, gi in zip(leaves, g)]

    def __call__(self):
        if self.mode == "none":
            losses = self.model(self.source, self.target)
            self.optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            self.optimizer.step()
            return
        alpha = INNER_LR_SCALE * self.optimizer.param_groups[0]["lr"]
        theta = [p.detach().requires_grad_(True) for p in self.params]
        _, align = self._losses(theta, True)
        g1 = self._grad(sum(align.values()), theta)
        with torch.no_grad():
            prime = [(t - alpha * g).requires_grad_(True) for t, g in zip(theta, g1)]
        det, _ = self._losses(prime, False)
        g2 = self._grad(sum(det.values()), prime)
        del prime
        total = [a + b for a, b in zip(g1, g2)]
        if self.mode == "second_order":
            with torch.no_grad():
                v_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g2]))
                t_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in theta]))
                eps = FD_EPS * t_norm.clamp_min(1.0) / v_norm.clamp_min(1e-30)
            hv = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    shifted = [(t + sign * eps * v).requires_grad_(True) for t, v in zip(theta, g2)]
                _, align = self._losses(shifted, True)
                hv.append(self._grad(sum(align.values()), shifted))
            with torch.no_grad():
                for tot, gp, gm in zip(total, hv[0], hv[1]):
                    tot.sub_((gp - gm) / (2 * eps), alpha=alpha)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.params, total):
            p.grad = g
        self.optimizer.step()


def _count_syncs(trainer):
    """Host reads of one trainer step outside the model's forward (None without the counter)."""
    if HostSyncCounter is None:
        return None
    original = loss_evaluator.LossEvaluator._forward
    counter = HostSyncCounter()

    def forward(self, *args, **kwargs):
        with counter.scope("model"):
            return original(self, *args, **kwargs)

    loss_evaluator.LossEvaluator._forward = forward
    try:
        with counter:
            trainer.run_step()
    finally:
        loss_evaluator.LossEvaluator._forward = original
    return counter.counts["step"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: quick R18-FPN (default); gpu: R50-C4 + DA heads")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default: cpu 64 64, "
                    "gpu 600 1200)")
    ap.add_argument("--images", type=int, nargs=2, default=(2, 2), metavar=("SOURCE", "TARGET"))
    ap.add_argument("--steps", type=int, default=10, help="timed rounds (one bare + one trainer step each)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    ap.add_argument("--lr", type=float, help="SOLVER.BASE_LR (default: cpu 1e-3; gpu the preset's 0, since the "
                    "random-weight R50-C4 diverges under any update -- every mode still runs its full computation)")
    ap.add_argument("--profile", metavar="DIR", help="also write torch.profiler traces of one bare and one "
                    "trainer step per mode (chrome trace JSON) and print their top operators")
    ap.add_argument("--fused-stats", action="store_true", help="use the fused gradient statistics on CPU too "
                    "(the CUDA code path; metaalign_det.meta.grad_stats.FUSED)")
    ap.add_argument("--output", help="also write the Markdown table here")
    ap.add_argument("--json", help="also write the raw numbers here")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's); 1 on a loaded "
                    "machine, where threads wait for each other at every operator")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fused_stats:
        from metaalign_det.meta import grad_stats

        if hasattr(grad_stats, "FUSED"):  # older code: always the loop
            grad_stats.FUSED["cpu"] = True

    cuda = args.device.startswith("cuda")
    lr = args.lr if args.lr is not None else (1e-3 if args.preset == "cpu" else None)
    cfg = preset_cfg(args.preset, args.device, [] if lr is None else ["SOLVER.BASE_LR", str(lr)])
    h, w = args.size or ((600, 1200) if args.preset == "gpu" else (64, 64))
    torch.manual_seed(0)
    base = build_model(cfg)
    nc = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    # the batch stays on the host, as a data loader delivers it
    source = synthetic_batch(args.images[0], h, w, nc, "cpu", seed=1)
    target = synthetic_batch(args.images[1], h, w, nc, "cpu", labelled=False, seed=2)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    rows, rows_profile = {}, {}
    for label in modes:
        mode = MODES[label]
        bare_model, trainer_model = copy.deepcopy(base).train(), copy.deepcopy(base).train()
        bare = BareStep(bare_model, build_optimizer(cfg, bare_model), mode, source, target)
        options = MetaAlignStepOptions(mode=mode, inner_lr_scale=INNER_LR_SCALE, hvp="finite_difference",
                                       fd_eps=FD_EPS, joint_grad_cos_period=0)
        trainer = MetaAlignSimpleTrainer(trainer_model, Repeat((source, target)),
                                         build_optimizer(cfg, trainer_model), options, seed=0)
        trainer.log_period = 20  # as SOLVER.LOG_PERIOD: metrics are read every 20 steps (older code: ignored)
        times = {"bare": [], "trainer": []}
        peaks = {"bare": float("nan"), "trainer": float("nan")}  # max over the timed steps (CUDA only)
        try:
            with EventStorage(0) as storage:
                def trainer_step(trainer=trainer, storage=storage):
                    trainer.iter = storage.iter
                    trainer.run_step()
                    storage.step()

                steps = {"bare": bare, "trainer": trainer_step}
                for i in range(args.warmup + args.steps):
                    for kind, fn in steps.items():
                        sync()
                        if cuda:
                            torch.cuda.reset_peak_memory_stats()
                        t0 = time.perf_counter()
                        fn()
                        sync()
                        if i >= args.warmup:
                            times[kind].append((time.perf_counter() - t0) * 1e3)
                            if cuda:
                                peak = torch.cuda.max_memory_allocated() / 2**30
                                peaks[kind] = peak if peaks[kind] != peaks[kind] else max(peaks[kind], peak)
                # one step that is not a logging step, counted for host reads
                while (storage.iter + 1) % trainer.log_period == 0:
                    trainer_step()
                trainer.iter = storage.iter
                syncs = _count_syncs(trainer)
                storage.step()
                if args.profile:
                    os.makedirs(args.profile, exist_ok=True)
                    rows_profile[label] = {kind: _profile(fn, f"{label} {kind}", args.profile, cuda)
                                           for kind, fn in steps.items()}
        except FloatingPointError as e:  # one diverging mode must not lose the others' figures
            print(f"{label}: diverged ({str(e).splitlines()[0][:120]})", flush=True)
            del bare, trainer, bare_model, trainer_model
            continue
        bare_ms, trainer_ms = statistics.median(times["bare"]), statistics.median(times["trainer"])
        rows[label] = {"bare_ms": bare_ms, "trainer_ms": trainer_ms, "ratio": trainer_ms / bare_ms,
                       "syncs": syncs, "bare_peak_gib": peaks["bare"], "trainer_peak_gib": peaks["trainer"],
                       "bare_all": times["bare"], "trainer_all": times["trainer"]}
        print(f"{label}: bare {bare_ms:.1f} ms, trainer {trainer_ms:.1f} ms, x{trainer_ms / bare_ms:.2f}, "
              f"host reads/step {syncs}", flush=True)
        del bare, trainer, bare_model, trainer_model
        if cuda:
            torch.cuda.empty_cache()

    dev = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    lines = [f"Trainer vs bare step on {dev}, torch {torch.__version__}, preset {args.preset} ({h}x{w}, "
             f"{args.images[0]}+{args.images[1]} images), median of {args.steps} interleaved rounds after "
             f"{args.warmup} warm-up", "",
             "| mode | bare ms | trainer ms | trainer / bare | host reads per step | peak GiB bare / trainer |",
             "|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['bare_ms']:.1f} | {r['trainer_ms']:.1f} | {r['ratio']:.2f} | "
                     f"{'-' if r['syncs'] is None else r['syncs']} | "
                     f"{r['bare_peak_gib']:.2f} / {r['trainer_peak_gib']:.2f} |")
    if rows_profile:
        lines += ["", f"One step of each under torch.profiler (CPU activity{' + CUDA' if cuda else ''}): wall "
                  "time with the profiler on, self time of all operators, the share of wall time outside any "
                  "operator (Python, autograd engine, allocator, profiler), all operator calls, and the "
                  "kernel-level ones (what a GPU would launch, a _foreach_ call counted once)"
                  f"{'; statistics forced to the fused (GPU) path' if args.fused_stats else ''}", "",
                  "| mode | step | wall ms | operators ms | outside operators | operator calls | "
                  "kernel-level calls |", "|---|---|---|---|---|---|---|"]
        for label, kinds in rows_profile.items():
            for kind, p in kinds.items():
                lines.append(f"| {label} | {kind} | {p['wall_ms']:.1f} | {p['ops_ms']:.1f} | "
                             f"{1 - p['ops_ms'] / p['wall_ms']:.0%} | {p['calls']} | {p['kernels']} |")
    emit_table(lines, args.output)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "rows": rows}, f, indent=1)


def _profile(step, label, out_dir, cuda):
    """One step under torch.profiler: chrome trace + top operators by self CPU time (files in out_dir).

    Returns wall ms, the operators' summed self CPU ms and their call count."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=False, with_stack=False) as prof:
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    name = label.replace(" ", "_")
    prof.export_chrome_trace(os.path.join(out_dir, f"trace_{name}.json"))
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=15)
    with open(os.path.join(out_dir, f"top_ops_{name}.txt"), "w") as f:
        f.write(table + "\n")
    print(f"\n== one step, {label}: top operators by self CPU time\n{table}", flush=True)
    ops_ms = sum(e.self_cpu_time_total for e in averages) / 1e3
    return {"wall_ms": wall, "ops_ms": ops_ms, "calls": sum(e.count for e in averages),
            "kernels": _kernel_calls(prof.events())}


# Operators that only allocate or make views (no kernel on a GPU).
_NO_KERNEL = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::reshape", "aten::_reshape_alias",
    "aten::as_strided", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::t",
    "aten::transpose", "aten::permute", "aten::expand", "aten::detach", "aten::alias", "aten::to",
    "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::_unsafe_view",
    "aten::flatten", "aten::contiguous", "aten::split", "aten::unbind", "aten::narrow", "aten::view_as",
    "aten::set_", "aten::resize_", "aten::_has_compatible_shallow_copy_type", "aten::is_nonzero",
}


def _kernel_calls(events) -> int:
    """Operator calls that would each launch a kernel on a GPU: innermost operators that compute (not the
    allocation/view ones above), with a multi-tensor ``_foreach_*`` call counted once (on CPU it runs a
    per-tensor loop underneath; on CUDA it is one multi-tensor kernel)."""
    def computes(e):
        return e.name.startswith("aten::") and e.name not in _NO_KERNEL

    n = 0
    for e in events:
        if not computes(e):
            continue
        parent, in_foreach = e.cpu_parent, False
        while parent is not None and not in_foreach:
            in_foreach = parent.name.startswith("aten::_foreach")
            parent = parent.cpu_parent
        if in_foreach:
            continue
        if e.name.startswith("aten::_foreach") or not any(computes(c) for c in e.cpu_children):
            n += 1
    return n


if __name__ == "__main__":
    main()
