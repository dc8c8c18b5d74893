"""DetectionAPEvaluator through detectron2's inference_on_dataset with a stub model on a registered toy
dataset; two gloo processes give the same result as one."""
import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Boxes, BoxMode, Instances

from metaalign_det.config import add_metaalign_config
from metaalign_det.evaluation import DetectionAPEvaluator, build_evaluator, compute_ap, pycocotools_ap
from tests.evaluation.test_ap import DEVICES, random_case, voc_reference
from tests.helpers.distributed import run_in_process_group

CLASSES = ["car", "person", "bus", "train"]  # random_case(num_classes=4): "train" never has GT
SEED = 2


def toy_records(seed=SEED):
    """Dataset records of random_case(seed): image i has image_id 100 + i; boxes alternate XYWH / XYXY."""
    det, gt, n_img, _ = random_case(seed)
    records = []
    for i in range(n_img):
        anns = []
        for j in torch.nonzero(gt["gt_images"] == i).flatten().tolist():
            x1, y1, x2, y2 = gt["gt_boxes"][j].double().tolist()
            xywh = len(anns) % 2 == 0
            anns.append(dict(
                bbox=[x1, y1, x2 - x1, y2 - y1] if xywh else [x1, y1, x2, y2],
                bbox_mode=BoxMode.XYWH_ABS if xywh else BoxMode.XYXY_ABS,
                category_id=int(gt["gt_classes"][j]),
                iscrowd=int(gt["gt_crowd"][j]),
                difficult=bool(gt["gt_difficult"][j]),
            ))  # fmt: skip
        records.append(dict(file_name=f"img_{i}.png", image_id=100 + i, height=120, width=120, annotations=anns))
    return records, det, gt, n_img


def register(name, seed=SEED):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: toy_records(seed)[0])
        MetadataCatalog.get(name).thing_classes = list(CLASSES)
    return name


class StubModel(torch.nn.Module):
    """Returns the precomputed detections of each input's image (original image coordinates)."""

    def __init__(self, det):
        super().__init__()
        self.det = det

    def forward(self, batched_inputs):
        outs = []
        for inp in batched_inputs:
            sel = self.det["det_images"] == inp["image_id"] - 100
            inst = Instances((inp["height"], inp["width"]))
            inst.pred_boxes = Boxes(self.det["det_boxes"][sel])
            inst.scores = self.det["det_scores"][sel]
            inst.pred_classes = self.det["det_classes"][sel]
            outs.append({"instances": inst})
        return outs


def batches(records, size=2):
    return [records[i : i + size] for i in range(0, len(records), size)]


@pytest.fixture
def toy(request):
    name = register(f"eval_toy_{request.node.name}")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("device", DEVICES)
def test_inference_on_dataset_equals_pycocotools(toy, tmp_path, caplog, device):
    records, det, gt, n_img = toy_records()
    evaluator = DetectionAPEvaluator(toy, output_dir=str(tmp_path))
    model = StubModel({k: v.to(device) for k, v in det.items()})  # the evaluator works where the outputs are
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        results = inference_on_dataset(model, batches(records), evaluator)
    ref = pycocotools_ap(**det, **gt, num_classes=len(CLASSES), num_images=n_img)["per_class_AP50"]
    bbox = results["bbox"]
    ours = np.array([bbox[f"AP50-{c}"] for c in CLASSES])
    assert np.array_equal(np.isnan(ours), np.isnan(ref)) and np.isnan(ours[3])
    np.testing.assert_allclose(np.nan_to_num(ours), np.nan_to_num(ref), atol=1e-6, rtol=0)
    assert bbox["AP50"] == pytest.approx(float(np.nanmean(ref)), abs=1e-6)
    # the table names the dataset, the metric and the IoU; "-" for the class without GT
    assert f"AP50 (coco101, IoU=0.50) on {toy} — 4 classes, {n_img} images" in caplog.text
    assert re.search(r"\| train +\| +- \|", caplog.text), caplog.text
    report = json.loads((tmp_path / f"ap_{toy}.json").read_text())
    assert report["metric"] == "coco101" and report["iou_threshold"] == 0.5 and report["num_images"] == n_img
    assert report["classes"][3]["ap"] is None and report["classes"][3]["num_gt"] == 0
    assert report["mAP"] == pytest.approx(bbox["AP50"], abs=1e-9)
    assert [c["num_gt"] for c in report["classes"]] == compute_ap(**det, **gt, num_classes=4).num_gt.tolist()
    assert "crowd and difficult GT ignored" in report["protocol"]


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_voc_metric_through_evaluator(toy, metric):
    records, det, gt, _ = toy_records()
    results = inference_on_dataset(StubModel(det), batches(records, 3), DetectionAPEvaluator(toy, metric=metric))
    ours = np.array([results["bbox"][f"AP50-{c}"] for c in CLASSES])
    ref = voc_reference(det, gt, len(CLASSES), metric)
    np.testing.assert_allclose(np.nan_to_num(ours), np.nan_to_num(ref), atol=1e-9, rtol=0)


def test_other_iou_key_and_partial_processing(toy):
    """IoU 0.75 -> "AP75" keys; images never processed do not count (detectron2's COCOEvaluator rule)."""
    records, det, gt, _ = toy_records()
    part = records[:5]
    results = inference_on_dataset(StubModel(det), batches(part), DetectionAPEvaluator(toy, iou=0.75))
    keep_d, keep_g = det["det_images"] < 5, gt["gt_images"] < 5
    ref = compute_ap(**{k: v[keep_d] for k, v in det.items()}, **{k: v[keep_g] for k, v in gt.items()},
                     num_classes=4, iou_threshold=0.75)  # fmt: skip
    assert set(results["bbox"]) == {"AP75"} | {f"AP75-{c}" for c in CLASSES}
    assert results["bbox"]["AP75"] == pytest.approx(100 * ref.mean_ap(), abs=1e-9)


def test_coco_ap_option_adds_pycocotools_numbers(toy):
    records, det, gt, n_img = toy_records()
    evaluator = DetectionAPEvaluator(toy, coco_ap=True)
    results = inference_on_dataset(StubModel(det), batches(records), evaluator)["bbox"]
    ref = pycocotools_ap(**det, **gt, num_classes=4, num_images=n_img)
    assert results["AP"] == pytest.approx(ref["AP"], abs=1e-9) and 0 < results["AP"] < results["AP50"]
    assert {"AP75", "APs", "APm", "APl", "AP-car"} <= set(results)
    assert evaluator.report["coco"]["per_class_AP50_agrees"] is True


def test_build_evaluator_reads_the_config(toy, tmp_path):
    cfg = add_metaalign_config(get_cfg())
    cfg.TEST.AP_METRIC, cfg.TEST.AP_IOU, cfg.OUTPUT_DIR = "voc12", 0.7, str(tmp_path)
    ev = build_evaluator(cfg, toy)
    assert (ev.metric, ev.iou, ev.output_dir) == ("voc12", 0.7, os.path.join(str(tmp_path), "inference"))
    assert build_evaluator(cfg, toy, "elsewhere").output_dir == "elsewhere"


def test_bad_inputs_fail_with_one_clear_message(toy):
    with pytest.raises(KeyError, match="dataset 'no_such_set' is not registered"):
        DetectionAPEvaluator("no_such_set")
    with pytest.raises(ValueError, match="metric must be one of coco101, voc07, voc12; got 'voc'"):
        DetectionAPEvaluator(toy, metric="voc")
    DatasetCatalog.register("eval_toy_no_classes", lambda: [])
    try:
        with pytest.raises(ValueError, match="has no thing_classes"):
            DetectionAPEvaluator("eval_toy_no_classes")
    finally:
        DatasetCatalog.remove("eval_toy_no_classes")
    records, det, _, _ = toy_records()
    bad = dict(det, det_classes=det["det_classes"] + 4)
    with pytest.raises(ValueError, match=r"predicted classes must be in \[0, 4\)"):
        inference_on_dataset(StubModel(bad), batches(records), DetectionAPEvaluator(toy))
    ev = DetectionAPEvaluator(toy)
    stray = [{"image_id": 999, "height": 10, "width": 10}]
    ev.process(stray, StubModel(det)(stray))
    with pytest.raises(ValueError, match="not in dataset .* e.g. 999"):
        ev.evaluate()


# ------------------------------------------------------------------------------------------- two processes
def _worker(rank, world, name):
    """This rank's evaluation results (detectron2's rule: {} on every rank but 0)."""
    register(name)
    records, det, _, _ = toy_records()
    mine = records[rank::world]  # what detectron2's InferenceSampler does, interleaved instead of blocks
    return inference_on_dataset(StubModel(det), batches(mine), DetectionAPEvaluator(name))


def test_two_process_gloo_equals_one_process(toy, tmp_path):
    records, det, _, _ = toy_records()
    single = inference_on_dataset(StubModel(det), batches(records), DetectionAPEvaluator(toy))
    rank0, rank1 = run_in_process_group(_worker, tmp_path, toy)
    assert rank1 == {}
    assert set(rank0["bbox"]) == set(single["bbox"])
    for k, v in single["bbox"].items():
        w = rank0["bbox"][k]
        assert (math.isnan(v) and math.isnan(w)) or w == pytest.approx(v, abs=1e-12), k
