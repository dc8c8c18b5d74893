#!/usr/bin/env python3
"""Does it adapt? AP50 on the demo pair's target val for source-only, DA joint, MetaAlign and the oracle.

    python benchmarks/adaptation_table.py                       # all rows, seeds 0 1 2 (make adaptation-table)
    python benchmarks/adaptation_table.py --rows source_only da_joint --seeds 0
    python benchmarks/adaptation_table.py --sweep 1 10 100      # tune INNER_LR_SCALE on the *source* val
    python benchmarks/adaptation_table.py --warm-start          # every row starts from the source-only model

Every run is ``tools/train_net.py`` in its own process on one shared schedule (configs/demo/ + the overrides
below), evaluated at the end on ``synthetic_foggy_val`` with the project's coco101 AP50. A run whose result
JSON exists is not retrained (an interrupted table resumes; an interrupted run continues from its last
checkpoint). The table (mean ± std over seeds, per class) and a PNG of the ``meta/grad_cos`` curves of DA
joint vs MetaAlign are written to --out-dir and, with --docs, to docs/.

``--warm-start`` is the usual DA setting (a detector that already detects on the source, like an
ImageNet/source-pretrained one): every row of a seed starts from that seed's source-only ``model_final.pth``
of the cold table (trained first if missing; the DA heads start fresh) and trains the same schedule again;
"source-only" is then the source-only model trained for as long again. Results go to ``<out-dir>/warm`` and,
with --docs, to docs/adaptation_table_warm.md and docs/grad_cos_warm.png.

Tuning is never done on the target val: ``--sweep`` trains MetaAlign (first order, alternate) with each
INNER_LR_SCALE and evaluates on the *source* val (synthetic_clear_val).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo")

ROWS = {  # name -> (config, extra overrides, label)
    "source_only": ("source_only_R18_FPN.yaml", [], "source-only"),
    "da_joint": ("da_joint_R18_FPN.yaml", [], "DA joint (img + ins + cst)"),
    "metaalign_fo_align_first": ("metaalign_R18_FPN.yaml", ["META.DIRECTION", "align_first"],
                                 "MetaAlign 1st order, align_first"),
    "metaalign_fo_alternate": ("metaalign_R18_FPN.yaml", ["META.DIRECTION", "alternate"],
                               "MetaAlign 1st order, alternate"),
    "metaalign_so": ("metaalign_R18_FPN.yaml", ["META.MODE", "second_order", "META.DIRECTION", "alternate"],
                     "MetaAlign 2nd order, alternate"),
    "oracle": ("oracle_R18_FPN.yaml", [], "oracle (labelled target)"),
}
TARGET_VAL, SOURCE_VAL = "synthetic_foggy_val", "synthetic_clear_val"


def schedule(iters, batch, lr, seed, test, out):
    """The one schedule every row shares (batch = source images = target images per step)."""
    return ["SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.TARGET_IMS_PER_BATCH", str(batch),
            "SOLVER.BASE_LR", str(lr), "SOLVER.MAX_ITER", str(iters),
            "SOLVER.WARMUP_ITERS", str(max(1, iters // 5)), "SOLVER.STEPS", f"({int(iters * 0.8)},)",
            "SOLVER.CHECKPOINT_PERIOD", str(max(1, iters // 4)), "SOLVER.LOG_PERIOD", "10",
            "META.JOINT_GRAD_COS_PERIOD", "10", "SEED", str(seed), "DATASETS.TEST", f"('{test}',)",
            "OUTPUT_DIR", out]


def run(name, config, extra, seed, args, test=TARGET_VAL, tag=None):
    out = os.path.join(args.out_dir, tag or name, f"seed{seed}")
    result = os.path.join(out, "inference", f"ap_{test}.json")
    if os.path.exists(result):
        print(f"[table] {tag or name} seed {seed}: done before, reusing {result}", flush=True)
        return result
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
           os.path.join(DEMO, config)]
    if os.path.exists(os.path.join(out, "last_checkpoint")):
        cmd.append("--resume")
    cmd += extra + schedule(args.iters, args.batch, args.lr, seed, test, out)
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "run.log"), "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0 or not os.path.exists(result):
        raise SystemExit(f"[table] {tag or name} seed {seed} failed (exit {proc.returncode}); see {out}/run.log")
    print(f"[table] {tag or name} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def read_ap(path):
    with open(path) as f:
        d = json.load(f)
    return d["mAP"], {c["name"]: c["ap"] for c in d["classes"]}


def fmt(values, spec=".1f"):
    """Mean ± sample std of ``values`` ("-" when empty; the value alone for one seed)."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format(statistics.stdev(values), spec.lstrip('+'))}"


def grad_cos_series(out_dir, row, seed, bin_size=10):
    """``meta/grad_cos`` of one run averaged over bins of ``bin_size`` iterations: {bin start: mean}.

    DA joint logs it every JOINT_GRAD_COS_PERIOD (10) steps and MetaAlign every step; binning puts both on
    the same footing. Empty when the run logged none (source-only, oracle) or does not exist.
    """
    from metaalign_det.utils.plots import load_metrics

    path = os.path.join(out_dir, row, f"seed{seed}")
    if not os.path.exists(os.path.join(path, "metrics.json")):
        return {}
    by_iter = {}
    for r in load_metrics(path):  # a resumed run rewrites iterations: the last value wins
        v = r.get("meta/grad_cos")
        if isinstance(v, (int, float)) and v == v:
            by_iter[int(r["iteration"])] = float(v)
    bins = {}
    for it, v in by_iter.items():
        bins.setdefault(it // bin_size * bin_size, []).append(v)
    return {b: statistics.mean(vs) for b, vs in sorted(bins.items())}


def mean_grad_cos(out_dir, row, seed):
    """Mean of the binned ``meta/grad_cos`` over the whole run (None when not logged)."""
    series = grad_cos_series(out_dir, row, seed)
    return statistics.mean(series.values()) if series else None


def grad_cos_plot(out_dir, seeds, png, warm=False):
    """meta/grad_cos over training, DA joint vs MetaAlign: thin lines one seed, thick the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colours = {"da_joint": "tab:blue", "metaalign_fo_align_first": "tab:orange",
               "metaalign_fo_alternate": "tab:green", "metaalign_so": "tab:red"}
    for row, colour in colours.items():
        per_seed = [s for s in (grad_cos_series(out_dir, row, seed) for seed in seeds) if s]
        for s in per_seed:
            ax.plot(list(s), list(s.values()), color=colour, alpha=0.3, lw=0.8)
        if per_seed:
            common = sorted(set.intersection(*(set(s) for s in per_seed)))
            ax.plot(common, [statistics.mean(s[b] for s in per_seed) for b in common], color=colour, lw=2.2,
                    label=f"{ROWS[row][2]} ({len(per_seed)} seeds)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("iteration (10-step bins)")
    ax.set_ylabel("cos(∇L_align, ∇L_det)")
    start = "from the source-only model" if warm else "from random init"
    ax.set_title(f"meta/grad_cos on the demo pair, {start} (thin: one seed, thick: mean)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    print(f"[table] wrote {png}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=160)
    p.add_argument("--batch", type=int, default=2, help="source images = target images per step")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--inner-lr-scale", type=float, default=None,
                   help="META.INNER_LR_SCALE of the MetaAlign rows (default: the config's, 1 in "
                        "configs/demo/metaalign_R18_FPN.yaml)")
    p.add_argument("--sweep", nargs="+", type=float, help="INNER_LR_SCALE values to compare on the source val")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "output", "adaptation_table"))
    p.add_argument("--docs", action="store_true", help="also write docs/adaptation_table.md and the PNG")
    p.add_argument("--warm-start", action="store_true",
                   help="start every row from the same seed's source-only model (see the module doc)")
    args = p.parse_args()
    t0 = time.perf_counter()

    if args.sweep:
        lines = ["| META.INNER_LR_SCALE | source val AP50 (synthetic_clear_val) |", "|---|---|"]
        for scale in args.sweep:
            res = [read_ap(run("metaalign_fo_alternate", "metaalign_R18_FPN.yaml",
                               ["META.DIRECTION", "alternate", "META.INNER_LR_SCALE", str(scale)], seed, args,
                               test=SOURCE_VAL, tag=f"sweep_scale{scale:g}"))[0] for seed in args.seeds]
            lines.append(f"| {scale:g} | {fmt(res)} |")
        table = "\n".join(lines)
        print("\n" + table)
        with open(os.path.join(args.out_dir, "sweep.md"), "w") as f:
            f.write(table + "\n")
        return

    cold_dir, suffix = args.out_dir, ""
    if args.warm_start:
        args.out_dir, suffix = os.path.join(cold_dir, "warm"), "_warm"
    classes, results = None, {}
    for seed in args.seeds:  # seed-major: an interrupted table has every row for the first seeds
        init = []
        if args.warm_start:
            cold = argparse.Namespace(**{**vars(args), "out_dir": cold_dir})
            run("source_only", ROWS["source_only"][0], [], seed, cold)
            init = ["MODEL.WEIGHTS", os.path.join(cold_dir, "source_only", f"seed{seed}", "model_final.pth")]
        for name in args.rows:
            config, extra, _ = ROWS[name]
            if args.inner_lr_scale is not None and "metaalign" in name:
                extra = extra + ["META.INNER_LR_SCALE", str(args.inner_lr_scale)]
            m, per_class = read_ap(run(name, config, extra + init, seed, args))
            classes = classes or list(per_class)
            results.setdefault(name, []).append((m, per_class))
    wall = time.perf_counter() - t0
    head = (f"| method | AP50 {TARGET_VAL} | per seed | " + " | ".join(classes)
            + " | mean grad_cos |")
    start = ("the seed's source-only model (trained as in the cold table), then" if args.warm_start
             else "random init,")
    lines = [f"AP50 (coco101, IoU 0.5) on {TARGET_VAL}, mean ± std over seeds {args.seeds}; R18-FPN from {start} "
             f"{args.iters} iterations, {args.batch} source + {args.batch} target images per step, lr "
             f"{args.lr}. grad_cos: cosine of ∇L_align and ∇L_det averaged over training (10-step bins), "
             f"mean ± std over seeds.", "", head, "|" + "---|" * (len(classes) + 4)]
    for name, runs in results.items():
        cos = [c for c in (mean_grad_cos(args.out_dir, name, seed) for seed in args.seeds) if c is not None]
        cells = ([fmt([r[0] for r in runs]), " / ".join(f"{r[0]:.1f}" for r in runs)]
                 + [fmt([r[1][c] for r in runs]) for c in classes]
                 + [fmt(cos, "+.3f")])
        lines.append(f"| {ROWS[name][2]} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table + f"\n\n(this invocation: {wall / 60:.1f} min)")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    png = os.path.join(args.out_dir, "grad_cos.png")
    grad_cos_plot(args.out_dir, args.seeds, png, warm=args.warm_start)
    if args.docs:
        import shutil

        shutil.copy(os.path.join(args.out_dir, "table.md"),
                    os.path.join(ROOT, "docs", f"adaptation_table{suffix}.md"))
        shutil.copy(png, os.path.join(ROOT, "docs", f"grad_cos{suffix}.png"))


if __name__ == "__main__":
    main()
