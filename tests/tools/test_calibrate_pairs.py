"""benchmarks/calibrate_demo.py --pair and benchmarks/calibrate_sim2real.py: each pair's sets are registered
names with the right classes, and the calibration detector is built for them (no training here; the end to
end run is the lead's calibration, docs/datasets.md)."""
import importlib.util
import os
import sys

import pytest

import metaalign_det  # noqa: F401

# isort: split
from detectron2.data import MetadataCatalog

from metaalign_det.data.catalog import is_registered
from metaalign_det.data.datasets.sim2real_render import PARTS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(REPO, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def calibrate():
    return _load("calibrate_demo")


def test_every_pair_reads_registered_sets(calibrate):
    for pair in calibrate.PAIRS.values():
        names = [pair["train"], pair["source_val"], pair["target_val"], *pair["more_val"].values()]
        assert all(is_registered(n) for n in names), names
        classes = {tuple(MetadataCatalog.get(n).thing_classes) for n in names}
        assert len(classes) == 1  # source and targets share the class list
    assert set(calibrate.PAIRS["sim2real"]["more_val"]) == set(PARTS)


def test_sim2real_detector_and_sets(calibrate):
    args = calibrate.parse_args([], default_pair="sim2real")
    assert args.pair == "sim2real" and args.out == "output/calibrate_sim2real"
    assert (args.iters, args.batch, args.lr) == (800, 2, 0.01)  # the pair's own calibration schedule
    assert calibrate.parse_args(["--iters", "20"], default_pair="sim2real").iters == 20
    cfg = calibrate.build_cfg(args)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert cfg.DATASETS.TRAIN == ("sim2real_sim_train",)
    assert cfg.DATASETS.TEST == ("sim2real_sim_val", "sim2real_real_val") + tuple(
        f"sim2real_{p}_real_val" for p in PARTS)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (128, 256)
    demo = calibrate.build_cfg(calibrate.parse_args([]))  # the demo pair's calibration is unchanged
    assert demo.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert demo.DATASETS.TEST == ("synthetic_clear_val", "synthetic_foggy_val")
    assert calibrate.parse_args([]).out == "output/calibrate_demo"
    assert (demo.SOLVER.MAX_ITER, demo.SOLVER.IMS_PER_BATCH, demo.SOLVER.BASE_LR) == (300, 4, 0.02)
    with pytest.raises(SystemExit) as e:
        calibrate.parse_args(["--pair", "fog"])
    assert e.value.code == 2


def test_calibrate_sim2real_runs_the_sim2real_pair(monkeypatch):
    import runpy

    import torch

    _load("calibrate_sim2real")  # imports calibrate_demo as its script does
    stops = []

    class Stop(Exception):
        pass

    def generate(pair, root):  # the first step of a run: stop there
        stops.append(pair)
        raise Stop

    monkeypatch.setattr(sys.modules["calibrate_demo"], "generate", generate)
    # nor the loggers' set-up (it would stop metaalign_det records from reaching pytest's log capture)
    monkeypatch.setattr("detectron2.utils.logger.setup_logger", lambda *a, **k: None)
    # the run sets torch's threads: keep this process's
    monkeypatch.setattr(sys, "argv", ["calibrate_sim2real.py", "--threads", str(torch.get_num_threads())])
    with pytest.raises(Stop):
        runpy.run_path(os.path.join(REPO, "benchmarks", "calibrate_sim2real.py"), run_name="__main__")
    assert stops == ["sim2real"]
