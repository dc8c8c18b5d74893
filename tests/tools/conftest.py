"""Fixtures for the tool tests: a tiny GeneralizedRCNN config (tests.helpers.configs.tiny_rcnn_cfg) as YAML,
a checkpoint of it, and a toy COCO dataset (JSON + PNGs) that the tools register with ``--coco-json``.
Session-scoped: built once."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.modeling import build_model

from metaalign_det.data.datasets.synthetic import ensure_synthetic_pair
from tests.helpers.configs import tiny_rcnn_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY_CLASSES = ["car", "person"]
TOY_HW = (48, 64)
TOY_GT_PER_CLASS = [2, 1]  # per image: two cars, one person -> num_gt over 3 images: [6, 3]
TOY_IMAGES = 3


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """DETECTRON2_DATASETS for tools/train_net.py runs on the quick schedules: the generated demo pair (once)."""
    root = tmp_path_factory.mktemp("d2_datasets")
    ensure_synthetic_pair(str(root))
    return root


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """(config YAML, checkpoint .pth, checkpoint with a 3-class box predictor) paths."""
    root = tmp_path_factory.mktemp("tiny_model")
    cfg = tiny_rcnn_cfg(num_classes=len(TOY_CLASSES))
    yaml_path = root / "tiny.yaml"
    yaml_path.write_text(cfg.dump())
    torch.manual_seed(0)
    model = build_model(cfg)
    state = model.state_dict()
    ckpt = root / "model.pth"
    torch.save({"model": state, "iteration": 10}, ckpt)
    bad = dict(state)
    fc = cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    bad["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(4, fc)  # 3 classes + background
    bad["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(4)
    bad["roi_heads.box_predictor.bbox_pred.weight"] = torch.zeros(12, fc)
    bad["roi_heads.box_predictor.bbox_pred.bias"] = torch.zeros(12)
    bad_ckpt = root / "model_3cls.pth"
    torch.save({"model": bad}, bad_ckpt)
    return str(yaml_path), str(ckpt), str(bad_ckpt)


@pytest.fixture(scope="session")
def toy_coco(tmp_path_factory):
    """(JSON path, image root) of TOY_IMAGES images of TOY_HW with TOY_GT_PER_CLASS boxes each."""
    root = tmp_path_factory.mktemp("toy_coco")
    rng = np.random.default_rng(0)
    h, w = TOY_HW
    images, anns = [], []
    for i in range(TOY_IMAGES):
        img = rng.integers(40, 200, size=(h, w, 3), dtype=np.uint8)
        for c, n in enumerate(TOY_GT_PER_CLASS):
            for k in range(n):
                x, y = 4 + 20 * k + 30 * c, 6 + 8 * c
                img[y : y + 14, x : x + 12] = (200, 30, 30) if c == 0 else (30, 30, 200)
                anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=c + 1, bbox=[x, y, 12, 14],
                                 area=168, iscrowd=0))
        Image.fromarray(img).save(root / f"im{i}.png")
        images.append(dict(id=i + 1, file_name=f"im{i}.png", height=h, width=w))
    cats = [dict(id=c + 1, name=n) for c, n in enumerate(TOY_CLASSES)]
    path = root / "toy.json"
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return str(path), str(root)


def run_tool(script, *args, timeout=300):
    """Run ``tools/<script>`` in a fresh interpreter from the repository root; returns CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def last_stderr_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
