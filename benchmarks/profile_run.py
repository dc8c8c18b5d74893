#!/usr/bin/env python3
"""Where a finished training run's wall time went, from its own logs (no re-run, no profiler overhead).

    python benchmarks/profile_run.py output/adaptation_study/da_joint/seed0 [more run folders]
    python benchmarks/profile_run.py RUN --markdown       # a table for docs/benchmarks.md

Reads ``log.txt`` (timestamps to the second), ``metrics.json`` (per-iteration ``time`` / ``data_time``,
detectron2's windowed medians at each log step) and, when present, the study's ``run.log`` and ``pad.json.log``
next to them. Phases:

* **start-up**: the first log line to "Starting training" (config, datasets, model, loader, weights) -- for a
  resumed run (several processes) from the end of the previous process's training instead, summed;
* **steps**: "Total training time" minus its hooks part, i.e. the training iterations themselves; of it,
  **data** = mean ``data_time`` x iterations (the step waiting for the loader);
* **evaluation**: the evaluator's "Total inference time" lines plus the AP computation after each (up to its
  "Evaluation results" line), periodic ones (inside the hooks) and the final test after training alike;
* **checkpoints, other hooks**: the trainer's "... on hooks" less the evaluations inside it;
* **other after training**: from "Total training time" to the last line of log.txt, less the final test;
* **PAD**: the proxy A-distance / grad_cos analysis the study runs afterwards (first to last timestamped line
  of ``pad.json.log``; else, from the study's record of the run, its seconds minus its training seconds).

Times from log lines are exact to about a second each; the phases of a 10-minute run add up to its wall time
within a few seconds.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import sys

_STAMP = re.compile(r"^\[(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)[^\]]*\]")
_DURATION = re.compile(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _stamp(line, year):
    m = _STAMP.match(line)
    if not m:
        return None
    mo, d, h, mi, s = (int(x) for x in m.groups())
    return datetime.datetime(year, mo, d, h, mi, s)


def _seconds(text):
    m = _DURATION.search(text)
    if not m:
        return None
    h, mi, s = m.groups()
    return int(h) * 3600 + int(mi) * 60 + float(s)


def _lines(path):
    year = datetime.datetime.fromtimestamp(os.path.getmtime(path)).year
    with open(path, errors="replace") as f:
        for line in f:
            t = _stamp(line, year)
            if t is not None:
                yield t, line.rstrip("\n")


def profile(run_dir):
    """Phases of one run (seconds), see the module docstring. Raises ValueError naming what is missing."""
    log = os.path.join(run_dir, "log.txt")
    if not os.path.isfile(log):
        raise ValueError(f"{run_dir}: no log.txt (not a training output folder)")
    lines = list(_lines(log))
    if not lines:
        raise ValueError(f"{log}: no timestamped line")
    first, last = lines[0][0], lines[-1][0]
    # one segment per process (a resumed run has several): its start-up runs from the end of the previous one
    start_up = train_total = hooks = after = 0.0
    prev_end, seg_start, finished, segments = first, None, 0, []
    for t, ln in lines:
        if "Starting training from iteration" in ln:
            seg_start = t
            start_up += (t - prev_end).total_seconds()
        elif "Total training time:" in ln and seg_start is not None:
            # "Total training time: 0:10:12 (0:00:55 on hooks)"
            total = _seconds(ln.split("Total training time:")[1])
            hook = _seconds(ln.split("(")[-1]) if "on hooks" in ln else 0.0
            train_total, hooks = train_total + total, hooks + hook
            after += max(0.0, (t - seg_start).total_seconds() - total)
            segments.append((seg_start, t))
            prev_end, seg_start, finished = t, None, finished + 1
    if not finished:
        raise ValueError(f"{log}: the run did not start or did not finish (no 'Starting training' / "
                         f"'Total training time' line)")
    after += (last - prev_end).total_seconds()
    evals, pending = [], None
    for t, ln in lines:
        if "Total inference time:" in ln:
            pending = (t, _seconds(ln.split("Total inference time:")[1]))
        elif "Evaluation results for" in ln and "csv format" in ln and pending is not None:
            # (seconds, whether it ran inside a training segment -- a hook -- or after one: the final test)
            evals.append((pending[1] + (t - pending[0]).total_seconds(), any(a <= t <= b for a, b in segments)))
            pending = None
    it, data = _metrics(os.path.join(run_dir, "metrics.json"))
    out = {
        "run": run_dir,
        "processes": finished,
        "start_up": start_up,
        "steps": train_total - hooks,
        "data_wait": data * it if it else None,
        "iterations": it,
        "hooks": hooks,
        "evaluation": sum(e for e, _ in evals),
        "evaluation_in_hooks": sum(e for e, inside in evals if inside),
        "evaluations": len(evals),
        "after_training": after,
        "logged_wall": (last - first).total_seconds(),
    }
    out["checkpoints_and_hooks"] = hooks - out["evaluation_in_hooks"]
    out["after_training_other"] = after - (out["evaluation"] - out["evaluation_in_hooks"])
    pad_log = os.path.join(run_dir, "pad.json.log")
    if os.path.isfile(pad_log):
        pad = list(_lines(pad_log))
        out["pad"] = (pad[-1][0] - pad[0][0]).total_seconds() if len(pad) > 1 else None
    record = _study_record(run_dir)
    if record:
        out["study_seconds"], out["study_train_seconds"] = record.get("seconds"), record.get("train_seconds")
        if out.get("pad") is None and record.get("seconds") and record.get("train_seconds"):
            # the study times the PAD process (its log has no timestamps): run seconds minus training seconds
            out["pad"] = record["seconds"] - record["train_seconds"]
    return out


def _metrics(path):
    """(iterations, mean data_time in s) from metrics.json; (0, 0.0) without it."""
    if not os.path.isfile(path):
        return 0, 0.0
    rows = {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "iteration" in r and "data_time" in r:
                rows[int(r["iteration"])] = r
    if not rows:
        return 0, 0.0
    return max(rows) + 1, statistics.fmean(r["data_time"] for r in rows.values())


def _study_record(run_dir):
    """The adaptation study's JSON for this run (benchmarks/results/<study>/<row>/seed<k>.json), if any."""
    seed_dir, row_dir = os.path.basename(os.path.normpath(run_dir)), os.path.dirname(os.path.normpath(run_dir))
    study = os.path.basename(os.path.dirname(row_dir))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "benchmarks", "results", study, os.path.basename(row_dir), f"{seed_dir}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def _fmt(v):
    return "-" if v is None else f"{v:.0f}"


def markdown(profiles):
    cols = ["start_up", "steps", "data_wait", "checkpoints_and_hooks", "evaluation", "after_training_other", "pad",
            "study_seconds"]
    head = ["run", "iterations", "start-up s", "steps s", "of it data wait s", "checkpoints, other hooks s",
            "evaluation s", "other after training s", "PAD s", "study total s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in profiles:
        out.append(f"| {p['run']} | {p['iterations']} | " + " | ".join(_fmt(p.get(c)) for c in cols) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output folders (OUTPUT_DIR)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    args = ap.parse_args(argv)
    try:
        profiles = [profile(r) for r in args.runs]
    except ValueError as e:
        print(f"profile_run: {e}", file=sys.stderr)
        return 2
    print(markdown(profiles) if args.markdown else json.dumps(profiles, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
