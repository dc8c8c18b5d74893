"""metaalign_det.evaluation.predictor: the class names and ids tools/predict.py writes, and its COCO rows."""
import pytest
import torch

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from metaalign_det.evaluation import coco_results, model_classes
from tests.helpers.configs import tiny_rcnn_cfg


@pytest.fixture(scope="module")
def metadata_names():
    """Two metadata-only names: one with dataset ids (as detectron2's COCO loader sets them), one without."""
    MetadataCatalog.get("predictor_test_ids").set(thing_classes=["a", "b"],
                                                  thing_dataset_id_to_contiguous_id={9: 1, 5: 0})
    MetadataCatalog.get("predictor_test_plain").set(thing_classes=["x", "y"])
    return "predictor_test_ids", "predictor_test_plain"


def test_names_and_dataset_ids_from_the_test_set(metadata_names):
    with_ids, plain = metadata_names
    cfg = tiny_rcnn_cfg(num_classes=2)
    cfg.DATASETS.TEST, cfg.DATASETS.TRAIN = (with_ids,), (plain,)
    got = model_classes(cfg)
    assert (got.names, got.ids, got.fallback) == (["a", "b"], [5, 9], False)
    assert got.source == f"thing_classes of dataset '{with_ids}'"
    cfg.DATASETS.TEST = ()  # then the training set, ids index + 1
    assert model_classes(cfg)[:3] == (["x", "y"], [1, 2], f"thing_classes of dataset '{plain}'")


def test_fallbacks_name_the_reason(metadata_names):
    _, plain = metadata_names
    cfg = tiny_rcnn_cfg(num_classes=3)
    got = model_classes(cfg)  # no dataset at all
    assert got.fallback and got.names == ["class_0", "class_1", "class_2"] and got.ids == [1, 2, 3]
    cfg.DATASETS.TEST = (plain,)
    got = model_classes(cfg)
    assert got.fallback and got.names == ["class_0", "class_1", "class_2"]
    assert got.source.startswith(f"dataset '{plain}' has 2 classes but the model predicts 3")
    cfg.DATASETS.TEST = ("predictor_test_no_metadata",)
    assert model_classes(cfg).source.startswith("dataset 'predictor_test_no_metadata' has no thing_classes")


def test_coco_rows_are_xywh_pixels_with_mapped_ids():
    inst = Instances((40, 60))
    inst.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 11.5, 32.0], [0.0, 0.0, 60.0, 40.0]]))
    inst.scores = torch.tensor([0.9, 0.25])
    inst.pred_classes = torch.tensor([1, 0])
    rows = coco_results(inst, image_id=7, category_ids=[5, 9])
    assert rows == [
        {"image_id": 7, "category_id": 9, "bbox": [1.0, 2.0, 10.5, 30.0], "score": 0.9},
        {"image_id": 7, "category_id": 5, "bbox": [0.0, 0.0, 60.0, 40.0], "score": 0.25},
    ]
    assert coco_results(inst[inst.scores > 1.0], 7, [5, 9]) == []


def test_names_of_a_coco_json_dataset_not_loaded_yet(tmp_path):
    """register_coco_instances sets thing_classes only on the first load: the names come from its JSON."""
    import json

    from detectron2.data.datasets import register_coco_instances

    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": 7, "name": "truck"}, {"id": 3, "name": "van"}]}))
    register_coco_instances("predictor_test_coco_json", {}, str(path), str(tmp_path))
    cfg = tiny_rcnn_cfg(num_classes=2)
    cfg.DATASETS.TEST = ("predictor_test_coco_json",)
    got = model_classes(cfg)
    assert (got.names, got.ids, got.fallback) == (["van", "truck"], [3, 7], False)  # sorted by id, as detectron2
    path.write_text("{not json")
    register_coco_instances("predictor_test_bad_json", {}, str(path), str(tmp_path))
    cfg.DATASETS.TEST = ("predictor_test_bad_json",)
    got = model_classes(cfg)
    assert got.fallback and got.names == ["class_0", "class_1"] and "cannot read the categories" in got.source
