"""tools/demo.py (`make demo`) end to end at a tiny schedule: the pair is generated, one base is trained, the
baseline (plain or fair source-only) and adapted detectors start from it, progress lines are printed while each
stage trains, and the side-by-side table is printed with the multi-seed study's figure for the same comparison."""
import glob
import json
import os
import re
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = os.path.join(REPO, "benchmarks", "results", "adaptation_study")
# the study's rows behind each demo comparison (adapted, baseline)
STUDY_ROWS = {"da_joint": ("da_joint", "source_only"), "teacher": ("teacher", "fair_source_only")}


def _study_test_ap(row):
    out = {}
    for path in glob.glob(os.path.join(STUDY, row, "seed*.json")):
        with open(path) as f:
            out[int(re.search(r"seed(\d+)", os.path.basename(path)).group(1))] = \
                json.load(f)["ap"]["synthetic_foggy_test"]["mAP"]
    return out


@pytest.mark.parametrize("method,label,baseline,baseline_dir", [
    ("da_joint", "DA joint", "source-only", "source_only"),
    # the teacher is compared with the fair baseline (same strong augmentation and EMA), not plain source-only
    ("teacher", "mean teacher", "fair source-only", "fair_source_only"),
])
def test_demo_prints_baseline_and_adapted_side_by_side(tmp_path, method, label, baseline, baseline_dir):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    out = tmp_path / "demo"
    cmd = [sys.executable, os.path.join(REPO, "tools", "demo.py"), "--method", method, "--base-iters", "2",
           "--iters", "2", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = proc.stdout
    assert "AP50 (coco101) on synthetic_foggy_val (target domain)" in text
    assert re.search(rf"\| class\s+\|\s+{re.escape(baseline)} \|\s+{re.escape(label)} \|\s+Δ \|", text), text
    rows = {m.group(1): m.groups()[1:] for m in
            re.finditer(r"^\| (car|person|bus|mean)\s+\|\s+([\d.]+) \|\s+([\d.]+) \|\s+([+-][\d.]+) \|$", text, re.M)}
    assert set(rows) == {"car", "person", "bus", "mean"}
    for so, ad, delta in rows.values():
        assert abs(float(ad) - float(so) - float(delta)) < 0.051  # the difference column is adapted - source-only
    # a progress line (iteration, loss) while every stage trains
    for stage, n in (("base", 2), (baseline, 2), (label, 2)):
        assert re.search(rf"^\[demo\] {re.escape(stage)}: iter {n}/{n}  loss [\d.]+", text, re.M), (stage, text)
    # under the one-seed table: the study's paired difference for the same comparison, from its records
    adapted, base_row = (_study_test_ap(r) for r in STUDY_ROWS[method])
    seeds = sorted(set(adapted) & set(base_row))
    diffs = [adapted[s] - base_row[s] for s in seeds]
    m = re.search(rf"multi-seed study, same comparison \({re.escape(label)} − {re.escape(baseline)}, .*?"
                  rf"(\d+) paired seeds\): ([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\], {re.escape(label)} ahead "
                  r"on (\d+) of (\d+) seeds", text)
    assert m, text
    assert int(m.group(1)) == len(seeds) >= 2
    assert float(m.group(2)) == pytest.approx(statistics.fmean(diffs), abs=0.051)
    assert float(m.group(3)) < float(m.group(2)) < float(m.group(4))
    assert int(m.group(5)) == sum(d > 0 for d in diffs) and int(m.group(6)) == len(seeds)
    # both detectors start from the one base checkpoint
    assert (out / "base" / "model_final.pth").exists()
    for run in (baseline_dir, method):
        log = (out / run / "log.txt").read_text()
        assert str(out / "base" / "model_final.pth") in log
    # a second call reuses everything and prints the same table
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert again.returncode == 0 and "training" not in again.stdout.split("data ready")[1].split("AP50")[0]
    assert [ln for ln in again.stdout.splitlines() if ln.startswith("| ")] == \
        [ln for ln in text.splitlines() if ln.startswith("| ")]
