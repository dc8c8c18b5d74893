"""The COCO-JSON annotation cache: round trip, reuse, stale -> rebuilt with one log line, missing tree."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import metaalign_det  # noqa: F401
from metaalign_det.data.datasets import cityscapes_foggy as csf
from metaalign_det.data.datasets.coco_cache import coco_to_records, load_or_build, records_to_coco
from metaalign_det.utils.io import atomic_write_json

from . import fake_trees as ft


@pytest.fixture
def cs_root(tmp_path):
    ft.make_cityscapes(str(tmp_path), foggy=False)
    return os.path.join(str(tmp_path), "cityscapes")


def _load(cs_root, split="train"):
    return csf.load_cityscapes_detection(cs_root, split)


def _boxes(recs):
    return sorted((os.path.basename(r["file_name"]), a["category_id"], a["bbox"], a["iscrowd"])
                  for r in recs for a in r["annotations"])


def test_cache_written_once_then_reused(cs_root, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        first = _load(cs_root)
    cache = csf.gtfine_cache_file(cs_root, "train")
    assert os.path.isfile(cache) and "converting annotations once into" in caplog.text

    def boom(path):
        raise AssertionError("mask decoded although the cache is valid")

    monkeypatch.setattr(csf, "instance_file_to_annotations", boom)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        second = _load(cs_root)
    assert _boxes(second) == _boxes(first)
    assert "stale" not in caplog.text and "converting" not in caplog.text


def test_cache_is_a_coco_file_pycocotools_reads(cs_root):
    from pycocotools.coco import COCO

    _load(cs_root, "val")
    coco = COCO(csf.gtfine_cache_file(cs_root, "val"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(ft.CS_CLASSES)
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 6
    bus = coco.loadAnns(coco.getAnnIds(catIds=[5]))[0]
    assert bus["bbox"] == [0, 0, 15, 10] and bus["area"] == 150 and bus["iscrowd"] == 0


def test_stale_cache_is_rebuilt_with_one_log_line(cs_root, caplog):
    _load(cs_root, "val")
    p = os.path.join(cs_root, "gtFine", "val", "lindau", "lindau_000000_000019_gtFine_instanceIds.png")
    arr = np.asarray(Image.open(p)).copy()
    arr[20:22, 30:36] = 26001  # a second car
    Image.fromarray(arr.astype(np.uint16)).save(p)
    os.utime(p, ns=(1, 1))  # a different mtime for sure, even on coarse-clock file systems
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        recs = _load(cs_root, "val")
    lines = [r for r in caplog.records if "stale" in r.getMessage()]
    assert len(lines) == 1 and "1 source files changed, 0 added, 0 removed" in lines[0].getMessage()
    lindau = [r for r in recs if "lindau" in r["file_name"]][0]
    assert sorted(a["bbox"] for a in lindau["annotations"]) == [[4.0, 4.0, 9.0, 9.0], [30.0, 20.0, 36.0, 22.0]]


def test_added_scene_rebuilds(cs_root, caplog):
    _load(cs_root, "val")
    for sub, suffix, img in (("gtFine", "gtFine_instanceIds", Image.fromarray(np.full((ft.H, ft.W), 7, np.uint16))),
                             ("leftImg8bit", "leftImg8bit", Image.new("RGB", (ft.W, ft.H)))):
        d = os.path.join(cs_root, sub, "val", "munster")
        os.makedirs(d, exist_ok=True)
        img.save(os.path.join(d, f"munster_000000_000019_{suffix}.png"))
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        recs = _load(cs_root, "val")
    assert len(recs) == 3
    assert "0 source files changed, 1 added, 0 removed" in caplog.text


def test_missing_tree_is_an_error_even_with_a_valid_cache(cs_root):
    _load(cs_root, "val")
    assert os.path.isfile(csf.gtfine_cache_file(cs_root, "val"))
    shutil.rmtree(os.path.join(cs_root, "gtFine"))
    with pytest.raises(FileNotFoundError, match="missing split 'val' of gtFine"):
        _load(cs_root, "val")


def test_unreadable_cache_is_rebuilt(cs_root, caplog):
    _load(cs_root, "val")
    cache = csf.gtfine_cache_file(cs_root, "val")
    with open(cache, "w") as f:
        f.write("{truncated")
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        assert len(_load(cs_root, "val")) == 2
    assert "is stale (unreadable" in caplog.text
    with open(cache) as f:
        assert json.load(f)["metaalign"]["kind"] == "cityscapes_gtFine_instanceIds"


def test_load_or_build_version_mismatch(tmp_path):
    path = str(tmp_path / "c.json")
    atomic_write_json(path, {"images": [], "metaalign": {"version": -1, "kind": "k", "fingerprint": []}})
    built = load_or_build(path, "k", [], lambda: {"images": [1], "annotations": [], "categories": []})
    assert built["images"] == [1]
    assert [f for f in os.listdir(tmp_path)] == ["c.json"]  # no temp file left behind


def test_records_coco_round_trip():
    from detectron2.structures import BoxMode

    recs = [{"file_name": "a.png", "image_id": 3, "height": 10, "width": 20, "annotations": [
        {"bbox": [1.0, 2.0, 5.0, 9.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1, "iscrowd": 0},
        {"bbox": [0.0, 0.0, 3.0, 3.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 1,
         "difficult": 1}]},
        {"file_name": "b.png", "image_id": 4, "height": 10, "width": 20, "annotations": []}]
    coco = records_to_coco(recs, ["x", "y"])
    assert coco["annotations"][0]["bbox"] == [1.0, 2.0, 4.0, 7.0] and coco["annotations"][0]["category_id"] == 2
    back = coco_to_records(coco, "/root", ["x", "y"])
    assert [r["file_name"] for r in back] == ["/root/a.png", "/root/b.png"]
    for r0, r1 in zip(recs, back):
        assert r1["annotations"] == r0["annotations"]
