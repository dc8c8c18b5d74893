"""Every YAML under configs/ loads (with _BASE_ inheritance), names registered datasets, and builds its model.

Domain-pair manifests (configs/pairs/) are not detectron2 configs: they are parsed by the manifest loader.
"""
import glob
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from metaalign_det.cli import setup_cfg
from metaalign_det.engine.trainer import check_solver_config, check_step_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
MANIFESTS = [p for p in ALL if os.sep + "pairs" + os.sep in p]
CONFIGS = [p for p in ALL if p not in MANIFESTS]
USER_PAIR_MANIFEST = os.path.join(ROOT, "configs", "pairs", "synthetic_demo.yaml")


def test_configs_found():
    assert len(CONFIGS) >= 20 and any("quick_schedules" in p for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_and_builds(path):
    opts = ["MODEL.DEVICE", "meta"]
    if os.sep + "user_pair" + os.sep in path:  # the pattern for a user's pair: the manifest and the class count
        opts += ["DATASETS.PAIR", USER_PAIR_MANIFEST, "MODEL.ROI_HEADS.NUM_CLASSES", "3"]
    cfg = setup_cfg(path, opts)
    if os.sep + "user_pair" + os.sep in path:
        assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TRAIN_TARGET, cfg.DATASETS.TEST) == (
            ("synthetic_demo_source",), ("synthetic_demo_target",), ("synthetic_demo_test",))
    check_step_config(cfg)
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TRAIN_TARGET", "TEST"):
        for name in cfg.DATASETS[key]:
            assert name in registered, f"{os.path.relpath(path, ROOT)}: DATASETS.{key} names unknown '{name}'"
    if os.path.basename(path).startswith("Base-"):
        return  # bases are completed by the configs that use them (datasets, class counts)
    cfg.defrost()
    cfg.MODEL.VGG.WEIGHTS = ""  # the referenced weight files are the user's to provide
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    with torch.device("meta"):  # builds every module (shapes, registries) without allocating weights
        model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    # the box predictor has the config's classes (+ background): what a checkpoint of this config must fit
    assert model.roi_heads.box_predictor.cls_score.out_features == cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_manifest_parses(path):
    from metaalign_det.data import load_manifest

    manifest = load_manifest(path)
    assert manifest["name"] == os.path.splitext(os.path.basename(path))[0]  # the file is named after its pair
    assert manifest["classes"] and all(isinstance(c, str) for c in manifest["classes"])
    for role in ("source", "target"):
        assert manifest[role]["type"] in ("coco", "voc", "registered", "images"), (role, manifest[role])


QUICK_DA = os.path.join(ROOT, "configs", "quick_schedules", "da_joint_R18_FPN_synthetic.yaml")


@pytest.mark.parametrize("opts, world, message", [
    (["SOLVER.IMS_PER_BATCH", "0"], 1, "SOLVER.IMS_PER_BATCH is 0: expected the number of images per step"),
    (["SOLVER.TARGET_IMS_PER_BATCH", "-2"], 1, "SOLVER.TARGET_IMS_PER_BATCH is -2: expected"),
    (["SOLVER.IMS_PER_BATCH", "6"], 4, "SOLVER.IMS_PER_BATCH is 6, which 4 processes cannot share evenly: use a "
                                       "multiple of 4"),
    (["SOLVER.TARGET_IMS_PER_BATCH", "3", "SOLVER.IMS_PER_BATCH", "2"], 2, "SOLVER.TARGET_IMS_PER_BATCH is 3, which 2"),
    (["SOLVER.MAX_ITER", "0"], 1, "SOLVER.MAX_ITER is 0: expected an integer >= 1"),
    (["SOLVER.LOG_PERIOD", "0"], 1, "SOLVER.LOG_PERIOD is 0: expected an integer >= 1"),
    (["TEST.EVAL_PERIOD", "-1"], 1, "TEST.EVAL_PERIOD is -1: expected an integer >= 0"),
    (["SOLVER.BASE_LR", "0.0"], 1, "SOLVER.BASE_LR is 0.0: expected a finite learning rate > 0"),
])
def test_bad_schedule_numbers_are_one_error_naming_the_key(opts, world, message):
    with pytest.raises(ValueError) as e:
        check_solver_config(setup_cfg(QUICK_DA, opts), world)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("lr", ["inf", "nan"])
def test_a_non_finite_learning_rate_from_a_yaml_file_is_refused(tmp_path, lr):
    path = tmp_path / "lr.yaml"  # YAML's .inf / .nan (an override on the command line cannot say them)
    path.write_text(f"_BASE_: {QUICK_DA}\nSOLVER:\n  BASE_LR: .{lr}\n")
    with pytest.raises(ValueError, match=f"^SOLVER.BASE_LR is {lr}: expected a finite learning rate > 0$"):
        check_solver_config(setup_cfg(str(path)), 1)


def test_schedule_checks_accept_the_shipped_configs_and_ignore_the_target_batch_without_target_images():
    check_solver_config(setup_cfg(QUICK_DA, ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.TARGET_IMS_PER_BATCH", "4"]), 4)
    source_only = setup_cfg(QUICK_DA, ["DATASETS.TRAIN_TARGET", "()", "SOLVER.TARGET_IMS_PER_BATCH", "0"])
    check_solver_config(source_only, 1)  # no target images are loaded: their batch size does not matter
