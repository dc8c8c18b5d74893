#!/usr/bin/env python3
"""`make demo`: what domain adaptation buys, on the generated demo pair, on a CPU in minutes.

1. generates the synthetic clear -> foggy pair on first use (seeded, ~15 s; reused afterwards);
2. trains a source-only R18-FPN *base* detector on the labelled clear images (--base-iters, --base-seed: like
   the multi-seed study, every --seed starts from this one base);
3. from that same base, trains two detectors for the same --iters iterations with the same seed (same source
   images in the same order): a baseline and the adapted one (--method). The default is the mean teacher
   (the base is its burn-in) against the *fair* source-only baseline (the same strong augmentation and EMA,
   no target image), so that the difference is what the unlabelled foggy images buy; the study measures
   that direction on every seed and the demo's short schedule shows it too (docs/benchmarks.md: the demo on
   five seeds). The feature-alignment methods (MetaAlign first order at the study's α, DA joint) are compared
   with plain source-only; from the demo's short base their one-seed difference is often within noise;
4. evaluates both on the target val (synthetic_foggy_val) and the source val, prints them side by side with
   the difference, and under it the multi-seed study's paired difference for the same comparison.

While a stage trains, one progress line per SOLVER.LOG_PERIOD iterations (iteration, loss, time left); each
run's full console output is in its run.log.

    python tools/demo.py [--method teacher|teacher_metaalign|metaalign|da_joint] [--base-iters 500]
                         [--iters 200] [--seed 0]

Finished steps are reused (a run whose result file exists is not retrained; an interrupted run resumes from
its last checkpoint). Everything lands under --output-dir (default output/demo). One seed shows one draw;
the multi-seed study (docs/benchmarks.md, `make adaptation-study`) says how large and how reliable the gain is.
"""
import argparse
import glob
import json
import os
import re
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
    "teacher": ("teacher_R18_FPN.yaml", "mean teacher", ["TEACHER.BURN_IN_ITERS", "0"], "fair"),
    "metaalign": ("metaalign_R18_FPN.yaml", "MetaAlign (1st order)", [], "plain"),
    "da_joint": ("da_joint_R18_FPN.yaml", "DA joint", [], "plain"),
    "teacher_metaalign": ("teacher_metaalign_R18_FPN.yaml", "teacher + MetaAlign", ["TEACHER.BURN_IN_ITERS", "0"],
                          "fair"),
}

# The multi-seed study's rows for each comparison (benchmarks/results/adaptation_study/<row>/seed*.json):
# --method -> (adapted row, baseline row). MetaAlign's row is the one at the α the demo config uses.
STUDY_ROWS = {
    "teacher": ("teacher", "fair_source_only"),
    "teacher_metaalign": ("teacher_metaalign_fo", "fair_source_only"),
    "metaalign": ("metaalign_fo_a1", "source_only"),
    "da_joint": ("da_joint", "source_only"),
}
STUDY_DIR = os.path.join(ROOT, "benchmarks", "results", "adaptation_study")
STUDY_SPLIT = "synthetic_foggy_test"
# detectron2's console line from the trainer (engine/printer.py): "eta: 0:01:10  iter: 59  total_loss: 1.2 ..."
_PROGRESS = re.compile(r"(?:eta: (?P<eta>[\d:]+)\s+)?iter: (?P<iter>\d+)\s+total_loss: (?P<loss>\S+)")
_INFERENCE = re.compile(r"Start inference on \d+ batches|Evaluating (\S+)")


def _fmt_eta(text):
    """'0:01:05' (h:mm:ss, as the trainer prints it) -> '1 min 05 s left'."""
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return f"{_fmt_time(seconds)} left"


def _train(config, out, opts, threads, stage, max_iter, log_name="run.log"):
    """tools/train_net.py in its own process (resumes if a checkpoint is there); returns wall seconds.

    Its console output goes to ``out/log_name``; on the console, one progress line per logged iteration
    (``[demo] <stage>: iter i/max_iter  loss L  <time> left``), taken from the trainer's metric line."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config]
    if os.path.exists(os.path.join(out, "last_checkpoint")):
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    evaluating = False
    with open(os.path.join(out, log_name), "a") as log:
        proc = subprocess.Popen(cmd + list(opts) + ["OUTPUT_DIR", out], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=ROOT, env=env, text=True, errors="replace")
        try:
            for line in proc.stdout:
                log.write(line)
                m = _PROGRESS.search(line)
                if m:
                    left = f"  {_fmt_eta(m['eta'])}" if m["eta"] else ""
                    print(f"[demo] {stage}: iter {int(m['iter']) + 1}/{max_iter}  loss {m['loss']}{left}",
                          flush=True)
                elif not evaluating and _INFERENCE.search(line):
                    evaluating = True
                    print(f"[demo] {stage}: evaluating on the val splits...", flush=True)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise SystemExit(f"[demo] training failed (exit {rc}): see {os.path.join(out, log_name)}")
    return time.perf_counter() - t0


def study_figure(method, study_dir=STUDY_DIR):
    """The multi-seed study's paired difference (adapted − baseline, target test AP50) for ``method``'s
    comparison, from the committed per-seed records: a dict with ``mean``, ``low``, ``high`` (95% t-interval,
    None for one seed), ``n``, ``wins`` (seeds where the adapted detector is ahead); None without records."""
    from metaalign_det.analysis.stats import paired_difference

    def test_ap(row):
        aps = {}
        for path in glob.glob(os.path.join(study_dir, row, "seed*.json")):
            with open(path) as f:
                rec = json.load(f)
            aps[int(re.search(r"seed(\d+)\.json$", path).group(1))] = rec["ap"][STUDY_SPLIT]["mAP"]
        return aps

    adapted, baseline = STUDY_ROWS[method]
    d = paired_difference(test_ap(adapted), test_ap(baseline))
    if d is None:
        return None
    return {"mean": d["mean"], "low": d["low"], "high": d["high"], "n": d["n"],
            "wins": sum(x > 0 for x in d["diffs"])}


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
    p.add_argument("--method", choices=list(METHODS), default="teacher")
    p.add_argument("--base-iters", type=int, default=500)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the two runs from the base (their data order, ROI sampling, augmentation)")
    p.add_argument("--base-seed", type=int, default=0,
                   help="seed of the base detector: like the multi-seed study, every --seed starts from one base")
    p.add_argument("--base-dir", default=None,
                   help="where the base detector is trained or found (default OUTPUT_DIR/base); share it between "
                        "seeds to train it once")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "output", "demo"))
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1),
                   help="torch threads of each training run (default: all CPUs)")
    args = p.parse_args(argv)
    if args.base_iters < 1 or args.iters < 1:
        p.error("--base-iters and --iters must be >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
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

    threads = args.threads
    tests = f"('{TARGET_VAL}', '{SOURCE_VAL}')"
    # 2. the shared start: a source-only base detector (constant lr after warm-up)
    base_dir = args.base_dir or os.path.join(args.output_dir, "base")
    base_w = os.path.join(base_dir, "model_final.pth")
    if not os.path.exists(base_w):
        print(f"[demo] training the source-only base detector: {args.base_iters} iterations from random init "
              f"({threads} threads)...", flush=True)
        s = _train(os.path.join(DEMO, "source_only_R18_FPN.yaml"), base_dir,
                   ["SOLVER.MAX_ITER", str(args.base_iters), "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS",
                    str(max(1, args.base_iters // 10)), "SOLVER.CHECKPOINT_PERIOD", str(args.base_iters),
                    "DATASETS.TEST", "()", "SEED", str(args.base_seed)], threads, "base", args.base_iters)
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
        print(f"[demo] {k} done ({_fmt_time(_train(cfg, out, sched + opts, threads, k, args.iters))})",
              flush=True)

    # 4. side by side
    (so_t, so_c), (ad_t, ad_c) = (_ap(runs[k][1], TARGET_VAL) for k in runs)
    so_s, ad_s = (_ap(runs[k][1], SOURCE_VAL)[0] for k in runs)
    width = max(len(label), len(base_label))
    print(f"\nAP50 (coco101) on {TARGET_VAL} (target domain) — both from the same base detector, "
          f"{args.iters} more iterations, seed {args.seed} (base seed {args.base_seed})")
    print(f"| {'class':<8} | {base_label:>{width}} | {label:>{width}} | {'Δ':>6} |")
    print(f"|{'-' * 10}|{'-' * (width + 2)}|{'-' * (width + 2)}|{'-' * 8}|")
    for c in so_c:
        print(f"| {c:<8} | {so_c[c]:>{width}.1f} | {ad_c[c]:>{width}.1f} | {ad_c[c] - so_c[c]:>+6.1f} |")
    print(f"| {'mean':<8} | {so_t:>{width}.1f} | {ad_t:>{width}.1f} | {ad_t - so_t:>+6.1f} |")
    fig = study_figure(args.method)
    if fig is not None:
        interval = f" [{fig['low']:+.1f}, {fig['high']:+.1f}]" if fig["low"] is not None else ""
        print(f"multi-seed study, same comparison ({label} − {base_label}, target test AP50, converged base, "
              f"{fig['n']} paired seeds): {fig['mean']:+.1f}{interval}, {label} ahead on {fig['wins']} of "
              f"{fig['n']} seeds (docs/adaptation_study.md)")
    print(f"\nsource val ({SOURCE_VAL}): {base_label} {so_s:.1f}, {label} {ad_s:.1f}")
    print(f"[demo] total {_fmt_time(time.perf_counter() - t_start)}; outputs under {args.output_dir}. One seed is "
          "one draw: docs/benchmarks.md has the multi-seed study.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
