"""Sim10k (car only) and generic VOC parsing on tiny generated trees."""
import logging
import os

import pytest

import metaalign_det  # noqa: F401

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

from metaalign_det.data.datasets import builtin
from metaalign_det.data.datasets.voc import load_voc_records, parse_voc_xml

from . import fake_trees as ft


@pytest.fixture
def sim_root(tmp_path):
    ft.make_sim10k(str(tmp_path))
    builtin.register_all_builtin(str(tmp_path), overwrite=True)
    yield os.path.join(str(tmp_path), "sim10k", "VOC2012")
    builtin.register_all_builtin(overwrite=True)


def test_sim10k_car_only_exact_boxes(sim_root, caplog):
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        recs = DatasetCatalog.get("sim10k_car_trainval")
    assert MetadataCatalog.get("sim10k_car_trainval").thing_classes == ["car"]
    by_id = {os.path.basename(r["file_name"]): r for r in recs}
    assert sorted(by_id) == ["3384645.jpg", "3384646.jpg", "3384700.jpg"]  # the no-car image is kept
    # VOC 1-based inclusive -> [xmin - 1, ymin - 1, xmax, ymax], as detectron2's VOC loader
    assert [(a["bbox"], a["category_id"], a["difficult"]) for a in by_id["3384645.jpg"]["annotations"]] == [
        ([0.0, 0.0, 10.0, 8.0], 0, 0), ([19.0, 4.0, 40.0, 24.0], 0, 1)]
    assert by_id["3384646.jpg"]["annotations"] == []
    assert [a["bbox"] for a in by_id["3384700.jpg"]["annotations"]] == [[2.0, 3.0, 7.0, 9.0]]
    assert all((r["height"], r["width"]) == (24, 40) for r in recs)
    # motorbike and person are dropped for the car-only set: one line, no error
    assert "dropped 2 boxes of classes ['motorbike', 'person']" in caplog.text


def test_sim10k_image_listed_but_absent(sim_root):
    os.remove(os.path.join(sim_root, "JPEGImages", "3384700.jpg"))
    with pytest.raises(FileNotFoundError, match=r"1 of 3 listed images are absent, e.g. .*3384700.jpg"):
        DatasetCatalog.get("sim10k_car_trainval")


def test_sim10k_listed_id_without_xml(sim_root):
    os.remove(os.path.join(sim_root, "Annotations", "3384646.xml"))
    with pytest.raises(FileNotFoundError, match=r"trainval.txt: 1 of 3 listed ids have no annotation XML, e.g. "
                                                r".*3384646.xml"):
        DatasetCatalog.get("sim10k_car_trainval")


def test_sim10k_missing_split_names_the_archive(sim_root):
    os.remove(os.path.join(sim_root, "ImageSets", "Main", "trainval.txt"))
    with pytest.raises(FileNotFoundError, match=r"missing split 'trainval': .*trainval.txt does not exist \(it comes "
                                                r"with repro_10k_annotations.tgz"):
        DatasetCatalog.get("sim10k_car_trainval")


def test_sim10k_missing_root(tmp_path):
    builtin.register_all_builtin(str(tmp_path), overwrite=True)
    try:
        with pytest.raises(FileNotFoundError, match=r"Sim10k root .* does not exist: extract repro_10k_images.tgz"):
            DatasetCatalog.get("sim10k_car_trainval")
    finally:
        builtin.register_all_builtin(overwrite=True)


def test_sim10k_empty_split(sim_root):
    open(os.path.join(sim_root, "ImageSets", "Main", "trainval.txt"), "w").close()
    with pytest.raises(ValueError, match=r"empty split: .*trainval.txt lists no image ids"):
        DatasetCatalog.get("sim10k_car_trainval")


def test_sim10k_corrupt_image_skipped_with_count(sim_root, caplog):
    with open(os.path.join(sim_root, "JPEGImages", "3384646.jpg"), "wb") as f:
        f.write(b"\x00" * 10)
    with caplog.at_level(logging.WARNING):
        recs = DatasetCatalog.get("sim10k_car_trainval")
    assert len(recs) == 2
    assert "skipping 1 unreadable image(s) of 3, first: " in caplog.text and "3384646.jpg" in caplog.text


def test_generic_voc_unknown_class_is_an_error(tmp_path):
    root = str(tmp_path / "voc")
    ft.make_voc(root)
    with pytest.raises(ValueError, match=r"class 'motorbike' \(first in Annotations/3384645.xml\) is not in the "
                                         r"declared classes \['car', 'person'\] and class_map has no entry"):
        load_voc_records(root, "trainval", classes=("car", "person"))
    # an explicit mapping (drop or rename) makes it valid
    recs = load_voc_records(root, "trainval", classes=("car", "person"), class_map={"motorbike": None})
    assert sum(len(r["annotations"]) for r in recs) == 4
    recs = load_voc_records(root, "trainval", classes=("vehicle", "person"),
                            class_map={"motorbike": "vehicle", "car": "vehicle"})
    assert sorted(a["category_id"] for r in recs for a in r["annotations"]) == [0, 0, 0, 0, 1]


def test_voc_xml_without_size_reads_the_image(tmp_path):
    root = str(tmp_path / "voc")
    ft.make_voc(root, images={"a": (40, 24, [("car", 1, 1, 4, 4, 0)])})
    with open(os.path.join(root, "Annotations", "a.xml"), "w") as f:
        f.write(ft._voc_xml("a", 40, 24, [("car", 1, 1, 4, 4, 0)], with_size=False))
    assert parse_voc_xml(os.path.join(root, "Annotations", "a.xml"))["height"] is None
    recs = load_voc_records(root, "trainval", classes=("car",))
    assert (recs[0]["height"], recs[0]["width"]) == (24, 40)


def test_voc_malformed_xml(tmp_path):
    root = str(tmp_path / "voc")
    ft.make_voc(root)
    with open(os.path.join(root, "Annotations", "3384700.xml"), "w") as f:
        f.write("<annotation><object>")
    with pytest.raises(ValueError, match=r"3384700.xml: not a readable VOC annotation XML"):
        load_voc_records(root, "trainval", classes=("car",), drop_other_classes=True)
