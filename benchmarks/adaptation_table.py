#!/usr/bin/env python3
"""Does it adapt? AP50 on the demo pair's target val for source-only, DA joint, MetaAlign and the oracle.

    python benchmarks/adaptation_table.py                       # all rows, seeds 0 1 2 (make adaptation-table)
    python benchmarks/adaptation_table.py --rows source_only da_joint --seeds 0
    python benchmarks/adaptation_table.py --sweep 1 10 100      # tune INNER_LR_SCALE on the *source* val

Every run is ``tools/train_net.py`` in its own process on one shared schedule (configs/demo/ + the overrides
below), evaluated at the end on ``synthetic_foggy_val`` with the project's coco101 AP50. A run whose result
JSON exists is not retrained (an interrupted table resumes; an interrupted run continues from its last
checkpoint). The table (mean ± std over seeds, per class) and a PNG of the ``meta/grad_cos`` curves of DA
joint vs MetaAlign are written to --out-dir and, with --docs, to docs/.

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


def fmt(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def grad_cos_plot(out_dir, seeds, png):
    """meta/grad_cos over training: DA joint (every JOINT_GRAD_COS_PERIOD steps) vs MetaAlign first order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metaalign_det.utils.plots import load_metrics

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colours = {"da_joint": "tab:blue", "metaalign_fo_align_first": "tab:orange",
               "metaalign_fo_alternate": "tab:green", "metaalign_so": "tab:red"}
    for row, colour in colours.items():
        for i, seed in enumerate(seeds):
            path = os.path.join(out_dir, row, f"seed{seed}")
            if not os.path.exists(os.path.join(path, "metrics.json")):
                continue
            rows = [r for r in load_metrics(path) if "meta/grad_cos" in r]
            if rows:
                ax.plot([r["iteration"] for r in rows], [r["meta/grad_cos"] for r in rows], color=colour,
                        alpha=0.8, lw=1, label=ROWS[row][2] if i == 0 else None)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cos(∇L_align, ∇L_det)")
    ax.set_title("meta/grad_cos on the demo pair (each line one seed)")
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
                   help="META.INNER_LR_SCALE of the MetaAlign rows (default: the config's, 10)")
    p.add_argument("--sweep", nargs="+", type=float, help="INNER_LR_SCALE values to compare on the source val")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "output", "adaptation_table"))
    p.add_argument("--docs", action="store_true", help="also write docs/adaptation_table.md and the PNG")
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

    classes, results = None, {}
    for seed in args.seeds:  # seed-major: an interrupted table has every row for the first seeds
        for name in args.rows:
            config, extra, _ = ROWS[name]
            if args.inner_lr_scale is not None and "metaalign" in name:
                extra = extra + ["META.INNER_LR_SCALE", str(args.inner_lr_scale)]
            m, per_class = read_ap(run(name, config, extra, seed, args))
            classes = classes or list(per_class)
            results.setdefault(name, []).append((m, per_class))
    wall = time.perf_counter() - t0
    head = f"| method | AP50 {TARGET_VAL} | " + " | ".join(classes) + " |"
    lines = [f"AP50 (coco101, IoU 0.5) on {TARGET_VAL}, mean ± std over seeds {args.seeds}; R18-FPN from random "
             f"init, {args.iters} iterations, {args.batch} source + {args.batch} target images per step, lr "
             f"{args.lr}", "", head, "|" + "---|" * (len(classes) + 2)]
    for name, runs in results.items():
        cells = [fmt([r[0] for r in runs])] + [fmt([r[1][c] for r in runs]) for c in classes]
        lines.append(f"| {ROWS[name][2]} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table + f"\n\n(this invocation: {wall / 60:.1f} min)")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    png = os.path.join(args.out_dir, "grad_cos.png")
    grad_cos_plot(args.out_dir, args.seeds, png)
    if args.docs:
        import shutil

        shutil.copy(os.path.join(args.out_dir, "table.md"), os.path.join(ROOT, "docs", "adaptation_table.md"))
        shutil.copy(png, os.path.join(ROOT, "docs", "grad_cos.png"))


if __name__ == "__main__":
    main()
