#!/usr/bin/env python3
"""`make demo` on several seeds: does its one-seed direction agree with the multi-seed study?

Runs ``tools/demo.py --method M --seed s`` for each seed (its own output folder; one base detector, trained by
the first seed, shared by every seed: the demo and the study start every seed from one base), reads the two
detectors' target-val AP50 from their result files and writes

    benchmarks/results/demo_seeds_<method>.json   {"seeds": {s: {"baseline", "adapted", "delta", "seconds"}}, ...}

with the paired difference (mean, 95% t-interval) and on how many seeds the adapted detector is ahead.
Finished seeds are reused (each seed's result.json; the demo itself resumes an interrupted run), so an
interrupted sweep continues.

    python benchmarks/demo_seeds.py [--method teacher] [--seeds 0 1 2 3 4] [--jobs 1]

``--jobs J`` runs J demos side by side with cpu_count / J threads each (for the direction check; the demo's
wall time is measured with one job on idle cores).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from metaalign_det.analysis.stats import paired_difference  # noqa: E402
from metaalign_det.utils.io import atomic_write_json  # noqa: E402

TARGET_VAL = "synthetic_foggy_val"
# tools/demo.py's output folders: --method -> (baseline folder, adapted folder)
FOLDERS = {"teacher": ("fair_source_only", "teacher"), "teacher_metaalign": ("fair_source_only", "teacher_metaalign"),
           "metaalign": ("source_only", "metaalign"), "da_joint": ("source_only", "da_joint")}


def _ap(folder):
    with open(os.path.join(folder, "inference", f"ap_{TARGET_VAL}.json")) as f:
        return json.load(f)["mAP"]


def run_seed(method, seed, out_root, threads, extra):
    out = os.path.join(out_root, f"seed{seed}")
    done = os.path.join(out, "result.json")
    if os.path.exists(done):  # measured by an earlier call (its wall time is the one that trained)
        with open(done) as f:
            return seed, json.load(f)
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--method", method, "--seed", str(seed),
           "--output-dir", out, "--threads", str(threads), "--base-dir", os.path.join(out_root, "base")
           ] + list(extra)
    t0 = time.perf_counter()
    with open(os.path.join(out, "demo.log"), "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"[demo_seeds] seed {seed} failed (exit {rc}): see {os.path.join(out, 'demo.log')}")
    base_dir, adapted_dir = FOLDERS[method]
    baseline, adapted = _ap(os.path.join(out, base_dir)), _ap(os.path.join(out, adapted_dir))
    print(f"[demo_seeds] seed {seed}: {baseline:.1f} -> {adapted:.1f} ({adapted - baseline:+.1f}) "
          f"in {seconds / 60:.1f} min", flush=True)
    result = {"baseline": baseline, "adapted": adapted, "delta": adapted - baseline, "seconds": seconds,
              "threads": threads}
    atomic_write_json(done, result)
    return seed, result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=sorted(FOLDERS), default="teacher")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--output-dir", default=os.path.join(ROOT, "output", "demo_seeds"))
    p.add_argument("--result", default=None, help="default benchmarks/results/demo_seeds_<method>.json")
    args, extra = p.parse_known_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    out_root = os.path.join(args.output_dir, args.method)
    first, rest = args.seeds[0], args.seeds[1:]
    # the first seed alone, with every thread (it also trains the shared base), then the rest J at a time
    results = dict([run_seed(args.method, first, out_root, max(1, os.cpu_count() or 1), extra)])
    with ThreadPoolExecutor(args.jobs) as pool:
        results.update(pool.map(lambda s: run_seed(args.method, s, out_root, threads, extra), rest))
    d = paired_difference({s: r["adapted"] for s, r in results.items()},
                          {s: r["baseline"] for s, r in results.items()})
    summary = {"method": args.method, "split": TARGET_VAL, "demo_args": extra, "jobs": args.jobs,
               "threads_per_run": threads, "seeds": {str(s): r for s, r in sorted(results.items())},
               "delta_mean": d["mean"], "delta_low": d["low"], "delta_high": d["high"],
               "adapted_ahead": sum(x > 0 for x in d["diffs"]), "n": d["n"]}
    path = args.result or os.path.join(ROOT, "benchmarks", "results", f"demo_seeds_{args.method}.json")
    atomic_write_json(path, summary)
    ci = f" [{d['low']:+.1f}, {d['high']:+.1f}]" if d["low"] is not None else ""
    print(f"[demo_seeds] {args.method}: Δ {d['mean']:+.1f}{ci} over {d['n']} seeds; adapted ahead on "
          f"{summary['adapted_ahead']} of {d['n']}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
