"""tools/analyze_alignment.py: PAD per representation and grad_cos per checkpoint, on any registered pair."""
import json
import os
import subprocess
import sys

import pytest
import torch

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.modeling import build_model

from metaalign_det.cli import setup_cfg
from tests.toy_data import make_toy_coco

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "analyze_alignment.py")
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "da_joint_R18_FPN_synthetic.yaml")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Toy clear/foggy COCO sets (8 images each), two checkpoints of the quick DA config, the overrides."""
    root = tmp_path_factory.mktemp("align")
    clear = make_toy_coco(str(root / "clear"), n_images=8, seed=1)
    foggy = make_toy_coco(str(root / "foggy"), n_images=8, seed=2, foggy=True)
    specs = [f"al_clear={clear}:{root / 'clear'}", f"al_foggy={foggy}:{root / 'foggy'}",
             f"al_clear2={clear}:{root / 'clear'}"]
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "DATASETS.TRAIN", "('al_clear',)", "DATASETS.TRAIN_TARGET",
            "('al_foggy',)", "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MIN_SIZE_TRAIN", "(96,)"]
    cfg = setup_cfg(CONFIG, opts, freeze=False)
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = str(root / f"w{seed}.pth")
        torch.save({"model": build_model(cfg).state_dict()}, path)
        weights.append(path)
    return {"root": root, "specs": specs, "opts": opts, "weights": weights}


def _run(args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def test_pad_table_and_json_for_two_checkpoints(pair):
    out = pair["root"] / "align.json"
    coco = [x for s in pair["specs"] for x in ("--coco-json", s)]
    proc = _run(["--config-file", CONFIG, "--weights", *pair["weights"], *coco, "--max-images", "8",
                 "--grad-batches", "2", "--output", str(out), *pair["opts"]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| checkpoint | PAD pooled | PAD locations | PAD roi | grad_cos |" in proc.stdout
    report = json.load(open(out))
    assert report["source_dataset"] == "al_clear" and report["target_dataset"] == "al_foggy"  # config defaults
    assert [c["weights"] for c in report["checkpoints"]] == pair["weights"]
    for c in report["checkpoints"]:
        assert set(c["pad"]) == {"pooled", "locations", "roi"}
        for rep, r in c["pad"].items():
            assert -2.0 <= r["pad"] <= 2.0 and r["n_source"] > 0 and r["n_target"] > 0, rep
        assert c["pad"]["roi"]["n_source"] > 8  # several proposals per image
        assert len(c["grad_cos"]["values"]) == 2 and all(-1 <= v <= 1 for v in c["grad_cos"]["values"])
        assert c["grad_cos"]["da_heads_from_init"] is False  # the checkpoints were saved with the heads
    # the toy target is the source blended towards grey: its global statistics give it away
    assert report["checkpoints"][0]["pad"]["pooled"]["pad"] > 1.0

    # the same images on both sides: nothing to tell apart
    same = pair["root"] / "same.json"
    proc = _run(["--config-file", CONFIG, "--weights", pair["weights"][0], *coco, "--source-dataset", "al_clear",
                 "--target-dataset", "al_clear2", "--max-images", "8", "--grad-batches", "0", "--output", str(same),
                 *pair["opts"]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = json.load(open(same))["checkpoints"][0]
    assert c["grad_cos"] is None
    assert c["pad"]["pooled"]["pad"] < report["checkpoints"][0]["pad"]["pooled"]["pad"]
    assert c["pad"]["pooled"]["pad"] <= 0.5


def test_the_same_seed_gives_the_same_numbers_whatever_the_checkpoints_place(pair):
    """Every RNG is seeded per checkpoint: the training loader's random flip (numpy) and the heads' init no
    longer depend on the run or on the checkpoints analysed before (grad_cos differed run to run)."""
    coco = [x for s in pair["specs"] for x in ("--coco-json", s)]
    reports = []
    for name, weights in (("alone", pair["weights"][1:]), ("second", pair["weights"])):
        out = pair["root"] / f"{name}.json"
        proc = _run(["--config-file", CONFIG, "--weights", *weights, *coco, "--max-images", "4",
                     "--grad-batches", "3", "--output", str(out), *pair["opts"]])
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports.append(json.load(open(out))["checkpoints"][-1])
    alone, second = reports
    assert alone["weights"] == second["weights"] == pair["weights"][1]
    assert alone["grad_cos"]["values"] == second["grad_cos"]["values"]
    assert alone["pad"] == second["pad"]


@pytest.mark.parametrize("extra, message", [
    (["--weights", "/nonexistent/w.pth"], "--weights /nonexistent/w.pth: no such file"),
    (["--target-dataset", "no_such_set"], "unknown dataset 'no_such_set'"),
])
def test_bad_input_is_one_line_and_exit_2(pair, extra, message):
    args = ["--config-file", CONFIG, "--weights", pair["weights"][0], "--coco-json", pair["specs"][0],
            "--coco-json", pair["specs"][1], *pair["opts"]]
    # later options win: put the bad one last among the options (before the KEY VALUE overrides)
    args = args[:-len(pair["opts"])] + extra + pair["opts"]
    proc = _run(args)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert err[-1].startswith("analyze_alignment.py: error: ") and message in err[-1], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr


def test_too_few_images_is_a_usage_error(pair):
    proc = _run(["--config-file", CONFIG, "--weights", pair["weights"][0], "--max-images", "2"])
    assert proc.returncode == 2 and "--max-images must be >= 4" in proc.stderr
