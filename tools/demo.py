#!/usr/bin/env python3
"""`make demo`: what domain adaptation buys, on the generated demo pair, on a CPU in minutes.

1. generates the synthetic clear -> foggy pair on first use (seeded, ~15 s; reused afterwards);
2. trains a source-only R18-FPN *base* detector on the labelled clear images (--base-iters);
3. from that same base, trains two detectors for the same --iters iterations with the same seed (same source
   images in the same order): source-only (trained on) and the adapted one (--method, default MetaAlign
   first order at the study's α; the unlabelled foggy train images are its only extra input). The teacher
   methods (mean teacher alone or inside MetaAlign; the base is their burn-in) are compared with the *fair*
   source-only instead: the same strong augmentation and EMA, no target image;
4. evaluates both on the target val (synthetic_foggy_val) and the source val and prints them side by side
   with the difference.

    python tools/demo.py [--method metaalign|da_joint|teacher|teacher_metaalign] [--base-iters 500]
                         [--iters 200] [--seed 0]

Finished steps are reused (a run whose result file exists is not retrained; an interrupted run resumes from
its last checkpoint). Everything lands under --output-dir (default output/demo). One seed shows one draw;
the multi-seed study (docs/benchmarks.md, `make adaptation-study`) says how large and how reliable the gain is.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo")
TARGET_VAL, SOURCE_VAL = "synthetic_foggy_val", "synthetic_clear_val"
# The baseline each method is compared with: plain source-only for feature alignment; for the teacher-student
# methods the *fair* source-only (same strong augmentation and EMA, no target image), so that the difference is
# what the target images buy, not what augmentation and weight averaging buy.
BASELINES = {
    "plain": ("source_only_R18_FPN.yaml", "source-only", "source_only"),
    "fair": ("fair_source_only_R18_FPN.yaml", "fair source-only", "fair_source_only"),
}
# --method -> (config, label, extra overrides, baseline); the base detector is the teacher's burn-in
METHODS = {
    "metaalign": ("metaalign_R18_FPN.yaml", "MetaAlign (1st order)", [], "plain"),
    "da_joint": ("da_joint_R18_FPN.yaml", "DA joint", [], "plain"),
    "teacher": ("teacher_R18_FPN.yaml", "mean teacher", ["TEACHER.BURN_IN_ITERS", "0"], "fair"),
    "teacher_metaalign": ("teacher_metaalign_R18_FPN.yaml", "teacher + MetaAlign", ["TEACHER.BURN_IN_ITERS", "0"],
                          "fair"),
}


def _train(config, out, opts, threads, log_name="run.log"):
    """tools/train_net.py in its own process (resumes if a checkpoint is there); returns wall seconds."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config]
    if os.path.exists(os.path.join(out, "last_checkpoint")):
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    with open(os.path.join(out, log_name), "a") as log:
        rc = subprocess.run(cmd + list(opts) + ["OUTPUT_DIR", out], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"[demo] training failed (exit {rc}): see {os.path.join(out, log_name)}")
    return time.perf_counter() - t0


def _ap(out, dataset):
    with open(os.path.join(out, "inference", f"ap_{dataset}.json")) as f:
        d = json.load(f)
    return d["mAP"], {c["name"]: c["ap"] for c in d["classes"]}


def _done(out):
    return all(os.path.exists(os.path.join(out, "inference", f"ap_{d}.json")) for d in (TARGET_VAL, SOURCE_VAL))


def _fmt_time(s):
    return f"{int(s // 60)} min {int(s % 60):02d} s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=list(METHODS), default="metaalign")
    p.add_argument("--base-iters", type=int, default=500)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=os.path.join(ROOT, "output", "demo"))
    args = p.parse_args(argv)
    if args.base_iters < 1 or args.iters < 1:
        p.error("--base-iters and --iters must be >= 1")
    t_start = time.perf_counter()

    # 1. the pair (generated once, in this process: it is the only thing both trainings share besides the base)
    sys.path.insert(0, ROOT)
    import metaalign_det  # noqa: F401  (compat first)
    # isort: split
    from detectron2.data import DatasetCatalog

    import metaalign_det.data  # noqa: F401  (registers the demo pair)

    for name in ("synthetic_clear_train", "synthetic_foggy_train", TARGET_VAL, SOURCE_VAL):
        DatasetCatalog.get(name)
    print(f"[demo] data ready ({time.perf_counter() - t_start:.0f} s)", flush=True)

    threads = max(1, os.cpu_count() or 1)
    tests = f"('{TARGET_VAL}', '{SOURCE_VAL}')"
    # 2. the shared start: a source-only base detector (constant lr after warm-up)
    base_dir = os.path.join(args.output_dir, "base")
    base_w = os.path.join(base_dir, "model_final.pth")
    if not os.path.exists(base_w):
        print(f"[demo] training the source-only base detector: {args.base_iters} iterations from random init "
              f"({threads} threads)...", flush=True)
        s = _train(os.path.join(DEMO, "source_only_R18_FPN.yaml"), base_dir,
                   ["SOLVER.MAX_ITER", str(args.base_iters), "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS",
                    str(max(1, args.base_iters // 10)), "SOLVER.CHECKPOINT_PERIOD", str(args.base_iters),
                    "DATASETS.TEST", "()", "SEED", str(args.seed)], threads)
        print(f"[demo] base done ({_fmt_time(s)})", flush=True)

    # 3. two detectors from the same base, the same schedule and seed (same source data order)
    config, label, extra, baseline = METHODS[args.method]
    base_cfg, base_label, base_out = BASELINES[baseline]
    runs = {base_label: (os.path.join(DEMO, base_cfg), os.path.join(args.output_dir, base_out), []),
            label: (os.path.join(DEMO, config), os.path.join(args.output_dir, args.method), extra)}
    sched = ["MODEL.WEIGHTS", base_w, "SOLVER.MAX_ITER", str(args.iters), "SOLVER.WARMUP_ITERS",
             str(max(1, args.iters // 10)), "SOLVER.STEPS", f"({int(args.iters * 0.8)},)",
             "SOLVER.CHECKPOINT_PERIOD", str(max(1, args.iters // 3)), "DATASETS.TEST", tests, "SEED", str(args.seed)]
    todo = {k: v for k, v in runs.items() if not _done(v[1])}
    # One after the other with every thread each: the source-only run is the cheap one, so running the two
    # side by side (one thread each) would leave a core idle while the adapted run finishes.
    for k, (cfg, out, opts) in todo.items():
        print(f"[demo] {k}: {args.iters} more iterations from the base ({threads} threads)...", flush=True)
        print(f"[demo] {k} done ({_fmt_time(_train(cfg, out, sched + opts, threads))})", flush=True)

    # 4. side by side
    (so_t, so_c), (ad_t, ad_c) = (_ap(runs[k][1], TARGET_VAL) for k in runs)
    so_s, ad_s = (_ap(runs[k][1], SOURCE_VAL)[0] for k in runs)
    width = max(len(label), len(base_label))
    print(f"\nAP50 (coco101) on {TARGET_VAL} (target domain) — both from the same base detector, "
          f"{args.iters} more iterations, seed {args.seed}")
    print(f"| {'class':<8} | {base_label:>{width}} | {label:>{width}} | {'Δ':>6} |")
    print(f"|{'-' * 10}|{'-' * (width + 2)}|{'-' * (width + 2)}|{'-' * 8}|")
    for c in so_c:
        print(f"| {c:<8} | {so_c[c]:>{width}.1f} | {ad_c[c]:>{width}.1f} | {ad_c[c] - so_c[c]:>+6.1f} |")
    print(f"| {'mean':<8} | {so_t:>{width}.1f} | {ad_t:>{width}.1f} | {ad_t - so_t:>+6.1f} |")
    print(f"\nsource val ({SOURCE_VAL}): {base_label} {so_s:.1f}, {label} {ad_s:.1f}")
    print(f"[demo] total {_fmt_time(time.perf_counter() - t_start)}; outputs under {args.output_dir}. One seed is "
          "one draw: docs/benchmarks.md has the multi-seed study.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
