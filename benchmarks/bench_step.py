#!/usr/bin/env python3
"""Step time and peak memory of the training step variants, in ONE process, same model and batch.

    python benchmarks/bench_step.py                      # CPU: quick R18-FPN at 128x256, 2+2 images
    python benchmarks/bench_step.py --device cuda        # GPU: R50-C4 at 600x1200, 2+2 images

The GPU preset uses the model, input size and batch of the earlier H200 step timings in docs/benchmarks.md
("Step timings on an H200").

Variants: source-only, DA joint (img + ins + consistency), MetaAlign first-order the official way (inner
gradient with a retained graph, L_align backpropagated twice), MetaAlign first-order (ours: one backward
per loss), MetaAlign second-order (finite-difference HVP: roi_align has no double backward), and on CUDA
the bf16-autocast DA joint / first-order. Timing: warm-up steps first, ``torch.cuda.synchronize()`` around
each step, median of ``--steps``. Prints a Markdown table (ms, ratio to DA joint, peak GiB) last.
"""
import argparse
import contextlib
import copy
import statistics
import time

import torch
from common import Repeat, emit_table, preset_cfg, synthetic_batch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from metaalign_det.engine.loss_evaluator import LossEvaluator
from metaalign_det.engine.train_loop import MetaAlignAMPTrainer, MetaAlignSimpleTrainer, MetaAlignStepOptions


def official_style_grads(trainer, source, target):
    """The microsoft/UDA `metaalign` update: inner grad with retain_graph, then backward of the total
    L_align(θ) + L_det(θ') -- L_align's graph is traversed twice. Used only as a timing reference."""
    params = trainer.params
    names, leaves = list(params), list(params.values())
    ev = LossEvaluator(trainer.model, source, target, trainer.autocast_context, trainer.step_seed())
    l_align = ev.align_loss(params)
    g = torch.autograd.grad(l_align, leaves, retain_graph=True, allow_unused=True)
    lr = trainer.options.inner_lr_scale * trainer.current_lr()
    fast = {n: (p - lr * gi.detach()) if gi is not None else p for n, p, gi in zip(names, leaves, g)}
    l_det = ev.det_loss(fast)
    trainer.optimizer.zero_grad(set_to_none=True)
    (l_align + l_det).backward()
    trainer.optimizer.step()


def run_variant(name, cfg, base_model, source, target, args):
    model = copy.deepcopy(base_model)
    model.train()
    optimizer = build_optimizer(cfg, model)
    mode = {"source-only": "none", "DA joint": "none", "MetaAlign FO (official style)": "first_order",
            "MetaAlign FO": "first_order", "MetaAlign SO (FD HVP)": "second_order"}[name.replace(" bf16", "")]
    options = MetaAlignStepOptions(mode=mode, direction="align_first", inner_lr_scale=10.0,
                                   joint_grad_cos_period=0)
    tgt = None if name.startswith("source-only") else target
    loader = Repeat((source, tgt))
    if name.endswith("bf16"):
        trainer = MetaAlignAMPTrainer(model, loader, optimizer, options, dtype="bfloat16")
    else:
        trainer = MetaAlignSimpleTrainer(model, loader, optimizer, options)
    trainer.log_period = 20  # as SOLVER.LOG_PERIOD's default: metrics read from the device every 20 steps
    cuda = args.device.startswith("cuda")
    times = []
    with EventStorage(0) as storage:
        for i in range(args.warmup + args.steps):
            if i == args.warmup and cuda:
                torch.cuda.reset_peak_memory_stats()
            trainer.iter = storage.iter = i
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if "official" in name:
                official_style_grads(trainer, source, tgt)
            else:
                trainer.run_step()
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            storage.step()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del trainer, model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return statistics.median(times) * 1000, peak


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", choices=["cpu", "gpu"], help="default: gpu on cuda, cpu otherwise")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--source", type=int, default=2, help="source images per step")
    p.add_argument("--target", type=int, default=2, help="target images per step")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default by preset)")
    p.add_argument("--variants", default="", help="comma-separated subset of the variant names")
    p.add_argument("--output", help="also write the Markdown table here")
    args = p.parse_args()
    preset = args.preset or ("gpu" if args.device.startswith("cuda") else "cpu")
    cfg = preset_cfg(preset, args.device)
    h, w = args.size or ((600, 1200) if preset == "gpu" else (128, 256))
    torch.manual_seed(0)
    base = build_model(cfg)
    nc = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    source = synthetic_batch(args.source, h, w, nc, args.device, seed=1)
    target = synthetic_batch(args.target, h, w, nc, args.device, labelled=False, seed=2)
    names = ["source-only", "DA joint", "MetaAlign FO (official style)", "MetaAlign FO", "MetaAlign SO (FD HVP)"]
    if args.device.startswith("cuda"):
        names += ["DA joint bf16", "MetaAlign FO bf16"]
    if args.variants:
        names = [n for n in names if n in args.variants.split(",")]
    results = {}
    for n in names:
        try:
            results[n] = run_variant(n, cfg, base, source, target, args)
        except FloatingPointError as e:  # one diverging variant must not lose the others' figures
            print(f"{n}: diverged ({str(e).splitlines()[0][:120]})", flush=True)
            results[n] = (float("nan"), float("nan"))
            continue
        print(f"{n}: {results[n][0]:.1f} ms, peak {results[n][1]:.2f} GiB", flush=True)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    ref = results.get("DA joint", (float("nan"),))[0]
    lines = [f"Step benchmark on {dev}, torch {torch.__version__}, preset {preset} ({h}x{w}, "
             f"{args.source}+{args.target} images), median of {args.steps} steps after {args.warmup} warm-up",
             "", "| step | ms | x DA joint | peak GiB |", "|---|---|---|---|"]
    for n, (ms, peak) in results.items():
        lines.append(f"| {n} | {ms:.1f} | {ms / ref:.2f} | {peak:.2f} |")
    emit_table(lines, args.output)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
