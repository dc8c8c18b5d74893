"""One checkpoint written by the trainer, read by every tool that takes weights -- on whichever detectron2 this
run has (CI runs it on the v0.6 repack and on detectron2 main built from source, where checkpoint files may
only be read inside ``DetectionCheckpointer.load``)."""
import json
import os
import subprocess
import sys

import pytest

from metaalign_det.data.datasets.synthetic import ensure_synthetic_pair

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the mean teacher: its checkpoints hold an "ema" entry, which every evaluating tool must pick
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "teacher_metaalign_fo_R18_FPN_synthetic.yaml")
SMALL = ["TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TEST", "64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2_datasets")
    ensure_synthetic_pair(str(root))
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")

    def _run(tool, *args):
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=900)
        assert proc.returncode == 0, f"{tool} {args}:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr
        return proc

    return _run


def test_trainer_checkpoint_through_every_tool(run, tmp_path):
    out = tmp_path / "run"
    run("train_net.py", "--config-file", CONFIG, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
        *SMALL, "OUTPUT_DIR", str(out))
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    # resume: continues at iteration 2 from the last checkpoint (optimizer, EMA, data streams)
    resumed = run("train_net.py", "--config-file", CONFIG, "--resume", "SOLVER.MAX_ITER", "3", *SMALL,
                  "OUTPUT_DIR", str(out))
    assert "Resumed at iteration 2" in resumed.stdout + resumed.stderr
    with open(out / "metrics.json") as f:
        iters = [json.loads(line)["iteration"] for line in f if line.strip()]
    assert iters[-1] == 2
    weights = str(out / "model_final.pth")
    # --eval-only, eval.py: the same weights, the same AP (both evaluate the EMA: the teacher)
    run("train_net.py", "--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", weights, "DATASETS.TEST",
        "('synthetic_foggy_val',)", "INPUT.MIN_SIZE_TEST", "64", "OUTPUT_DIR", str(tmp_path / "ev"))
    with open(tmp_path / "ev" / "inference" / "ap_synthetic_foggy_val.json") as f:
        map_eval_only = json.load(f)["mAP"]
    run("eval.py", "--config-file", CONFIG, "--weights", weights, "--dataset", "synthetic_foggy_val",
        "--output", str(tmp_path / "ap.json"), "INPUT.MIN_SIZE_TEST", "64")
    with open(tmp_path / "ap.json") as f:
        report = json.load(f)
    got = report["datasets"]["synthetic_foggy_val"]["mAP"] if "datasets" in report else report["mAP"]
    assert got == pytest.approx(map_eval_only, abs=1e-6)
    run("visualize.py", "predictions", "--config-file", CONFIG, "--weights", weights, "--dataset",
        "synthetic_foggy_val", "--num-images", "1", "--out-dir", str(tmp_path / "vis"), "INPUT.MIN_SIZE_TEST", "64")
    assert list((tmp_path / "vis").glob("*.png"))
    run("analyze_alignment.py", "--config-file", CONFIG, "--weights", weights, "--max-images", "4",
        "--grad-batches", "1", "--output", str(tmp_path / "pad.json"))
    with open(tmp_path / "pad.json") as f:
        assert json.load(f)["checkpoints"][0]["pad"]
