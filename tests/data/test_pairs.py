"""Domain-pair manifests and register_domain_pair: paths, class checks, idempotence, config key."""
import glob
import json
import os

import pytest
import yaml

import metaalign_det  # noqa: F401

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

from metaalign_det.data import (
    load_manifest,
    register_domain_pair,
    register_pair_manifests,
    unregister_domain_pair,
)
from metaalign_det.data.datasets import builtin

from . import fake_trees as ft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def trees(tmp_path):
    """tmp/{coco source, voc target, cityscapes} + the builtin names bound to tmp; pairs cleaned up after."""
    root = str(tmp_path / "data")
    ft.make_cityscapes(root, foggy=False)
    builtin.register_all_builtin(root, overwrite=True)
    # COCO source with KITTI-style names: Car kept, Pedestrian dropped by the class map
    for i in range(2):
        ft.write_image(os.path.join(root, "kitti", "images", f"{i:06d}.png"), 40, 24, seed=i)
    ft.write_coco(os.path.join(root, "kitti", "train.json"),
                  images=[{"id": 10 + i, "file_name": f"{i:06d}.png", "height": 24, "width": 40} for i in range(2)],
                  categories=[(1, "Car"), (2, "Pedestrian")],
                  annotations=[{"id": 1, "image_id": 10, "category_id": 1, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                               {"id": 2, "image_id": 10, "category_id": 2, "bbox": [20, 2, 3, 9], "iscrowd": 0},
                               {"id": 3, "image_id": 11, "category_id": 1, "bbox": [5, 5, 4, 4], "iscrowd": 1}])
    ft.make_voc(os.path.join(root, "voc"))
    yield root
    for name in ("kitti_like", "api_pair", "other", "unlabelled_pair"):
        unregister_domain_pair(name)
    for name in ("plain_target_images",):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    builtin.register_all_builtin(overwrite=True)


def _manifest(tmp_path, root, **over):
    m = {
        "name": "kitti_like",
        "classes": ["car"],
        "class_map": {"Car": "car", "Pedestrian": None},
        # relative to the manifest's directory (tmp_path/pairs)
        "source": {"type": "coco", "json": "../data/kitti/train.json", "image_root": "../data/kitti/images"},
        "target": {"type": "voc", "root": "${DETECTRON2_DATASETS}/voc", "split": "trainval",
                   "class_map": {"motorbike": None, "person": None}},
        "test": {"type": "registered", "name": "cityscapes_car_val"},
    }
    m.update(over)
    os.makedirs(tmp_path / "pairs", exist_ok=True)
    path = str(tmp_path / "pairs" / f"{m['name']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(m, f)
    return path


def test_manifest_registers_three_sets_with_exact_content(trees, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    path = _manifest(tmp_path, trees)
    names = register_pair_manifests([path])
    assert names == ["kitti_like_source", "kitti_like_target", "kitti_like_test"]
    for n in names:
        assert MetadataCatalog.get(n).thing_classes == ["car"]
    src = DatasetCatalog.get("kitti_like_source")
    assert [(r["image_id"], os.path.basename(r["file_name"])) for r in src] == [(10, "000000.png"), (11, "000001.png")]
    assert [[(a["bbox"], a["category_id"], a["iscrowd"]) for a in r["annotations"]] for r in src] == [
        [([1.0, 2.0, 11.0, 7.0], 0, 0)], [([5.0, 5.0, 9.0, 9.0], 0, 1)]]
    tgt = DatasetCatalog.get("kitti_like_target")
    assert sum(len(r["annotations"]) for r in tgt) == 3 and len(tgt) == 3  # 3 cars; no-car image kept
    test = DatasetCatalog.get("kitti_like_test")
    assert len(test) == 2 and sum(len(r["annotations"]) for r in test) == 2  # the 2 cars of the tiny val
    assert all(a["category_id"] == 0 for r in test for a in r["annotations"])
    assert MetadataCatalog.get("kitti_like_target").role == "target"


def test_registering_twice_is_a_no_op_and_a_different_pair_is_an_error(trees, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    path = _manifest(tmp_path, trees)
    first = register_pair_manifests(path)
    assert register_pair_manifests([path]) == first
    _manifest(tmp_path, trees, classes=["car", "truck"], class_map={"Car": "car", "Pedestrian": "truck"},
              test={"type": "voc", "root": "../data/voc", "class_map": {"motorbike": "truck", "person": None}})
    with pytest.raises(ValueError, match=r"a different domain pair 'kitti_like' is already registered \(from pair "
                                         r"manifest .*kitti_like.yaml\)"):
        register_pair_manifests([path])


def test_python_api_equals_manifest(trees):
    names = register_domain_pair(
        "api_pair", ["car"],
        source={"type": "voc", "root": os.path.join(trees, "voc"), "class_map": {"motorbike": None, "person": None}},
        target={"type": "registered", "name": "cityscapes_car_train"},
        test={"type": "registered", "name": "cityscapes_car_val"})
    assert names == {"source": "api_pair_source", "target": "api_pair_target", "test": "api_pair_test"}
    assert len(DatasetCatalog.get("api_pair_source")) == 3
    cs = DatasetCatalog.get("cityscapes_car_train")
    assert [r["annotations"] for r in DatasetCatalog.get("api_pair_target")] == [r["annotations"] for r in cs]


def test_class_lists_must_agree_registered(trees):
    with pytest.raises(ValueError, match=r"test: dataset 'cityscapes_det_val' has classes \['person', 'rider', 'car', "
                                         r".*'bicycle'\] which \(after class_map\) do not match the pair's classes "
                                         r"\['car'\]"):
        register_domain_pair("other", ["car"], source={"type": "registered", "name": "cityscapes_car_train"},
                             target={"type": "registered", "name": "cityscapes_car_train"},
                             test={"type": "registered", "name": "cityscapes_det_val"})
    assert "other_source" not in DatasetCatalog.list()  # nothing half-registered
    # an explicit mapping makes it agree
    drop = {c: None for c in ft.CS_CLASSES if c != "car"}
    register_domain_pair("other", ["car"], source={"type": "registered", "name": "cityscapes_car_train"},
                         target={"type": "registered", "name": "cityscapes_car_train"},
                         test={"type": "registered", "name": "cityscapes_det_val", "class_map": drop})
    assert sum(len(r["annotations"]) for r in DatasetCatalog.get("other_test")) == 2


def test_class_lists_must_agree_coco(trees, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    path = _manifest(tmp_path, trees, class_map={"Car": "car"})  # Pedestrian neither declared nor mapped
    register_pair_manifests([path])  # registration reads no annotation file ...
    with pytest.raises(ValueError, match=r"class 'Pedestrian' \(first in 000000.png\) is not in the declared classes "
                                         r"\['car'\]"):
        DatasetCatalog.get("kitti_like_source")  # ... loading does
    unregister_domain_pair("kitti_like")
    path = _manifest(tmp_path, trees, classes=["car", "person"], class_map={"Car": "car", "Pedestrian": None},
                     test={"type": "voc", "root": "../data/voc", "class_map": {"motorbike": None}})
    register_pair_manifests([path])
    with pytest.raises(ValueError, match=r"its classes \['Car', 'Pedestrian'\] \(after class_map: \['car'\]\) do not "
                                         r"match the declared classes \['car', 'person'\]"):
        DatasetCatalog.get("kitti_like_source")


def test_voc_set_with_unknown_class(trees, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    path = _manifest(tmp_path, trees, target={"type": "voc", "root": "../data/voc", "class_map": {"person": None}})
    register_pair_manifests([path])
    with pytest.raises(ValueError, match=r"target: class 'motorbike' \(first in Annotations/3384645.xml\) is not in "
                                         r"the declared classes \['car'\]"):
        DatasetCatalog.get("kitti_like_target")


@pytest.mark.parametrize("over, message", [
    ({"classes": []}, r"classes must be a non-empty list"),
    ({"classes": ["car", "car"]}, r"has duplicates"),
    ({"class_map": {"Car": "vehicle"}}, r"class_map sends 'Car' to 'vehicle', which is not in classes \['car'\]"),
    ({"source": {"type": "coco", "json": "x.json"}}, r"source: a coco set needs \['image_root', 'json'\]; missing "
                                                     r"\['image_root'\]"),
    ({"target": {"type": "lmdb", "root": "x"}}, r"target: 'type' must be one of \['coco', 'registered', 'voc'\]"),
    ({"test": {"type": "voc", "root": "x", "splt": "val"}},
     r"test: unknown keys \['splt' \(did you mean 'split'\?\)\] for a voc set"),
    ({"test": {"type": "registered", "name": "no_such_dataset"}}, r"dataset 'no_such_dataset' is not registered"),
    ({"name": "bad name"}, r"name must be a non-empty string"),
])
def test_manifest_validation_errors(trees, tmp_path, monkeypatch, over, message):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    path = _manifest(tmp_path, trees, **over)
    with pytest.raises(ValueError, match=message):
        register_pair_manifests([path])


def test_manifest_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pair manifest .*nope.yaml does not exist"):
        load_manifest(str(tmp_path / "nope.yaml"))
    p = tmp_path / "m.yaml"
    p.write_text("name: x\nclasses: [car]\nsource: {}\ntarget: {}\n")
    assert load_manifest(str(p))["test"] is None  # the labelled target test set is optional
    p.write_text("name: x\nclasses: [car]\nsource: {}\n")
    with pytest.raises(ValueError, match=r"missing keys \['target'\]"):
        load_manifest(str(p))
    p.write_text("name: x\nclases: [car]\nsource: {}\ntarget: {}\n")
    with pytest.raises(ValueError, match=r"missing keys \['classes'\]; unknown keys \['clases' \(did you mean "
                                         r"'classes'\?\)\]"):
        load_manifest(str(p))
    p.write_text("name: [x\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_manifest(str(p))
    # in one line, with where the parser stopped
    p.write_text("name: x\nsource: {type: voc, root: ${DETECTRON2_DATASETS}/voc}\n")
    with pytest.raises(ValueError, match=r"^pair manifest .*m.yaml: not valid YAML \(while parsing a flow mapping: "
                                         r"expected ',' or '\}', but got '\{' at line 2, column 28\)$"):
        load_manifest(str(p))


def test_unset_environment_variable_in_a_path(trees, tmp_path):
    path = _manifest(tmp_path, trees, target={"type": "voc", "root": "$METAALIGN_SURELY_UNSET_VAR/voc"})
    with pytest.raises(ValueError, match=r"target.root: '\$METAALIGN_SURELY_UNSET_VAR/voc' uses an environment "
                                         r"variable that is not set"):
        register_pair_manifests([path])


def test_config_key_and_shipped_manifests(trees):
    from detectron2.config import get_cfg

    from metaalign_det.config import add_metaalign_config

    shipped = sorted(glob.glob(os.path.join(REPO, "configs", "pairs", "*.yaml")))
    assert {os.path.basename(p) for p in shipped} >= {"kitti_to_cityscapes_car.yaml", "synthetic_demo.yaml"}
    cfg = add_metaalign_config(get_cfg())
    cfg.DATASETS.PAIR_MANIFESTS = tuple(shipped)
    try:
        names = register_pair_manifests(cfg.DATASETS.PAIR_MANIFESTS)
        assert {"kitti_to_cityscapes_car_source", "kitti_to_cityscapes_car_test", "synthetic_demo_target"} <= set(names)
        assert MetadataCatalog.get("synthetic_demo_test").thing_classes == ["car", "person", "bus"]
        # the KITTI tree is absent here: registering worked, loading says precisely what is missing
        with pytest.raises(FileNotFoundError, match=r"VOC root .*kitti/VOC2012 does not exist"):
            DatasetCatalog.get("kitti_to_cityscapes_car_source")
        assert len(DatasetCatalog.get("kitti_to_cityscapes_car_test")) == 2  # = cityscapes_car_val (tiny tree)
    finally:
        for p in shipped:
            unregister_domain_pair(load_manifest(p)["name"])


# ----------------------------------------------------------------------------------------------------------
# unlabelled targets: a folder of images, an images-only COCO file, a registered dataset without classes


def _target_images(root):
    """root/target/{a,b}/*.jpg: 3 images of two sizes, and a file that is not an image."""
    paths = []
    for k, (sub, w, h) in enumerate([("a", 40, 24), ("a", 40, 24), ("b", 30, 20)]):
        p = os.path.join(root, "target", sub, f"frame_{k:03d}.jpg")
        ft.write_image(p, w, h, seed=50 + k)
        paths.append(p)
    with open(os.path.join(root, "target", "README.txt"), "w") as f:
        f.write("not an image")
    return paths


def test_images_folder_target(trees, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    paths = _target_images(trees)
    path = _manifest(tmp_path, trees, name="unlabelled_pair",
                     target={"type": "images", "root": "${DETECTRON2_DATASETS}/target"})
    names = register_pair_manifests([path])
    assert names == ["unlabelled_pair_source", "unlabelled_pair_target", "unlabelled_pair_test"]
    meta = MetadataCatalog.get("unlabelled_pair_target")
    assert meta.thing_classes == ["car"] and meta.role == "target"
    assert f"target = unlabelled images under {trees}/target (*.jpg" in meta.protocol
    recs = DatasetCatalog.get("unlabelled_pair_target")
    assert [(r["file_name"], r["image_id"], r["width"], r["height"]) for r in recs] == [
        (paths[0], 0, 40, 24), (paths[1], 1, 40, 24), (paths[2], 2, 30, 20)]
    assert all("annotations" not in r for r in recs)
    assert register_pair_manifests([path]) == names  # idempotent with the defaulted extensions
    unregister_domain_pair("unlabelled_pair")
    path = _manifest(tmp_path, trees, name="unlabelled_pair",
                     target={"type": "images", "root": "../data/target", "extensions": [".PNG"]})
    register_pair_manifests([path])
    with pytest.raises(ValueError, match=r"target: no images \(\*.png\) under .*/data/target \(empty split\)"):
        DatasetCatalog.get("unlabelled_pair_target")


def test_images_only_coco_target_and_the_class_checks_it_skips(trees, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    paths = _target_images(trees)
    json_path = os.path.join(trees, "target", "images.json")
    with open(json_path, "w") as f:  # sizes may be absent: read from the headers
        json.dump({"images": [{"id": 7, "file_name": "a/frame_000.jpg", "height": 24, "width": 40},
                              {"id": 9, "file_name": "b/frame_002.jpg"}]}, f)
    target = {"type": "coco", "json": json_path, "image_root": os.path.join(trees, "target")}
    # classes [car, person]: a labelled target would have to match them, an unlabelled one has nothing to check
    path = _manifest(tmp_path, trees, name="unlabelled_pair", classes=["car", "person"], target=target,
                     class_map={"Car": "car", "Pedestrian": "person"},
                     test={"type": "voc", "root": "../data/voc", "class_map": {"motorbike": None}})
    register_pair_manifests([path])
    recs = DatasetCatalog.get("unlabelled_pair_target")
    assert [(r["file_name"], r["image_id"], r["width"], r["height"]) for r in recs] == [
        (paths[0], 7, 40, 24), (paths[2], 9, 30, 20)]
    assert all("annotations" not in r for r in recs)
    unregister_domain_pair("unlabelled_pair")
    # the same file as the source or the test set: refused when loaded, naming the file
    for role in ("source", "test"):
        path = _manifest(tmp_path, trees, name="unlabelled_pair", **{role: target})
        register_pair_manifests([path])
        with pytest.raises(ValueError, match=rf"{role}: {json_path} has no 'categories' list \(expected a COCO "
                                             rf"instances JSON\); a file with only 'images' is accepted for a "
                                             rf"domain pair's target set only"):
            DatasetCatalog.get(f"unlabelled_pair_{role}")
        unregister_domain_pair("unlabelled_pair")


@pytest.mark.parametrize("role", ["source", "test"])
def test_an_images_set_is_for_the_target_only(trees, tmp_path, monkeypatch, role):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    path = _manifest(tmp_path, trees, **{role: {"type": "images", "root": "../data/target"}})
    with pytest.raises(ValueError, match=rf"{role}: an 'images' set has no labels; only the target may be "
                                         rf"unlabelled \(give the {role} set as coco, voc or registered\)"):
        register_pair_manifests([path])
    assert f"kitti_like_{role}" not in DatasetCatalog.list()


@pytest.mark.parametrize("extensions", [[], "jpg", [".jpg", 3]])
def test_images_set_extensions_are_checked(trees, tmp_path, monkeypatch, extensions):
    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    path = _manifest(tmp_path, trees, target={"type": "images", "root": "../data/target", "extensions": extensions})
    with pytest.raises(ValueError, match=r"target.extensions: expected a list of file suffixes such as \[.jpg, .png\]"):
        register_pair_manifests([path])


def test_registered_target_without_classes_is_unlabelled(trees):
    recs = [{"file_name": p, "image_id": i, "height": 24, "width": 40,
             "annotations": [{"bbox": [0, 0, 5, 5], "bbox_mode": 0, "category_id": 3}]}
            for i, p in enumerate(_target_images(trees)[:2])]
    DatasetCatalog.register("plain_target_images", lambda: recs)  # no metadata at all
    register_domain_pair("unlabelled_pair", ["car"], source={"type": "registered", "name": "cityscapes_car_train"},
                         target={"type": "registered", "name": "plain_target_images"},
                         test={"type": "registered", "name": "cityscapes_car_val"})
    got = DatasetCatalog.get("unlabelled_pair_target")
    assert [r["file_name"] for r in got] == [r["file_name"] for r in recs]
    assert all("annotations" not in r for r in got)  # labels of unknown classes: not ours, dropped
    with pytest.raises(ValueError, match=r"source: dataset 'plain_target_images' has no thing_classes metadata"):
        register_domain_pair("other", ["car"], source={"type": "registered", "name": "plain_target_images"},
                             target={"type": "registered", "name": "cityscapes_car_train"},
                             test={"type": "registered", "name": "cityscapes_car_val"})


def test_paired_loader_gets_the_unlabelled_target_images(trees, tmp_path, monkeypatch):
    from metaalign_det.cli import setup_cfg
    from metaalign_det.data.paired_loader import build_paired_train_loader

    monkeypatch.setenv("DETECTRON2_DATASETS", trees)
    paths = _target_images(trees)
    path = _manifest(tmp_path, trees, name="unlabelled_pair",
                     target={"type": "images", "root": "${DETECTRON2_DATASETS}/target"})
    quick = os.path.join(REPO, "configs", "quick_schedules", "Base-quick-R18-FPN.yaml")
    cfg = setup_cfg(quick, ["DATASETS.PAIR_MANIFESTS", f"('{path}',)",
                            "DATASETS.TRAIN", "('unlabelled_pair_source',)",
                            "DATASETS.TRAIN_TARGET", "('unlabelled_pair_target',)", "DATASETS.TEST", "()",
                            "MODEL.ROI_HEADS.NUM_CLASSES", "1", "INPUT.MIN_SIZE_TRAIN", "(24,)",
                            "SOLVER.TARGET_IMS_PER_BATCH", "3"])
    seen = set()
    for _, (source, target) in zip(range(2), build_paired_train_loader(cfg)):
        assert all(d["instances"].has("gt_boxes") for d in source)
        assert len(target) == 3 and all("instances" not in d for d in target)
        assert all(d["image"].shape[0] == 3 for d in target)
        seen |= {d["file_name"] for d in target}
    assert seen == set(paths)  # 6 draws = 2 shuffled passes over the 3 target images
