"""``DetectionAPEvaluator``: detectron2 DatasetEvaluator computing per-class AP at one IoU on the device.

Detections stay tensors on the device the model produced them on (or ``device``); under DDP they are
gathered to the main process with ``torch.distributed`` collectives on that device; ground truth is read on
the main process from the dataset's registered records and put on the same device; the AP itself is
:func:`metaalign_det.evaluation.ap.compute_ap` (vectorised torch).
"""
import copy
import logging
import math
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.catalog import unregistered_dataset
from ..options import EvalOptions
from ..utils.io import atomic_write_json
from .ap import METRIC_SPECS, METRICS, APResult, compute_ap
from .gather import gather_tensors
from .ground_truth import evaluation_order, ground_truth_tensors, image_key
from .table import ap_key, format_ap_table, protocol_text

__all__ = ["DetectionAPEvaluator", "build_evaluator", "unlabelled_reason"]

logger = logging.getLogger(__name__)


def unlabelled_reason(dataset_name: str, dicts) -> Optional[str]:
    """Why ``dicts`` (the records of ``dataset_name``) cannot be evaluated, or None.

    An images-only set (an unlabelled target: no record has an ``annotations`` key) has no ground truth, and
    AP over it would be a table of dashes. A labelled set whose images hold no box is still labelled.
    """
    if any("annotations" in d for d in dicts):
        return None
    return (f"dataset '{dataset_name}' has no labels (an images-only set, e.g. an unlabelled target): AP needs "
            f"a labelled set; evaluate on the pair's labelled test set instead")


class DetectionAPEvaluator(DatasetEvaluator):
    """Per-class AP at one IoU threshold (``metric``: "coco101", "voc07" or "voc12"; see ``ap.py``).

    ``evaluate()`` returns ``{"bbox": {"AP50": mAP, "AP50-<class>": AP, ...}}`` in percent on the main
    process ({} elsewhere); the key follows the IoU ("AP75" at 0.75). A class without GT has nan and is
    left out of the mean. The per-class table is logged, and written with the protocol and the counts to
    ``output_dir/ap_<dataset>.json`` when ``output_dir`` is given. Only images that went through
    ``process`` are evaluated (as detectron2's COCOEvaluator does).

    Args:
        dataset_name: a DatasetCatalog name whose MetadataCatalog entry has ``thing_classes``.
        metric, iou: AP convention and IoU threshold.
        device: where detections, GT and the computation live; None = the device of the model's outputs.
        output_dir: folder for ``ap_<dataset>.json``; None = no file.
        distributed: gather detections from all processes (set False when each process evaluates alone).
        coco_ap: also run pycocotools (AP@[.5:.95], AP75, APs/m/l and per-class AP; slow on large sets) and,
            for ``coco101``, cross-check the per-class AP against it.
        max_dets: detections kept per image and class; -1 = the metric's rule (coco101: 100, VOC: all).
    """

    def __init__(
        self,
        dataset_name: str,
        metric: str = "coco101",
        iou: float = 0.5,
        device=None,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        coco_ap: bool = False,
        max_dets: Optional[int] = -1,
    ):
        if metric not in METRICS:
            raise ValueError(f"DetectionAPEvaluator: metric must be one of {', '.join(METRICS)}; got {metric!r}")
        if not 0.0 < float(iou) <= 1.0:
            raise ValueError(f"DetectionAPEvaluator: iou must be in (0, 1], got {iou}")
        if unregistered_dataset([dataset_name]) is not None:
            raise KeyError(f"DetectionAPEvaluator: dataset '{dataset_name}' is not registered in DatasetCatalog")
        classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        if not classes:  # register_coco_instances fills the metadata only once the dataset is loaded
            DatasetCatalog.get(dataset_name)
            classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        if not classes:
            raise ValueError(
                f"DetectionAPEvaluator: MetadataCatalog['{dataset_name}'] has no thing_classes (the class names "
                f"in contiguous-id order are needed)"
            )
        self.dataset_name = dataset_name
        self.metric = metric
        self.iou = float(iou)
        self.device = torch.device(device) if device is not None else None
        self.output_dir = output_dir
        self.distributed = distributed
        self.coco_ap = coco_ap
        self.max_dets = max_dets
        self.class_names: List[str] = list(classes)
        self.report: Optional[Dict] = None  # the last evaluate()'s report (main process)
        self.reset()

    def reset(self):
        self._keys: List = []
        self._dets: List[torch.Tensor] = []  # per image [n, 5]: x1 y1 x2 y2 score (float32)
        self._classes: List[torch.Tensor] = []  # per image [n] int64

    def process(self, inputs, outputs):
        """Keep each image's predicted boxes (original image coordinates), scores and classes on the device."""
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                raise KeyError("DetectionAPEvaluator: the model output has no 'instances' (box predictions)")
            inst = out["instances"]
            boxes = inst.pred_boxes.tensor.detach()
            dev = self.device if self.device is not None else boxes.device
            self._keys.append(image_key(inp))
            det = torch.cat([boxes.to(dev, torch.float32), inst.scores.detach().to(dev, torch.float32)[:, None]], 1)
            self._dets.append(det)
            self._classes.append(inst.pred_classes.detach().to(dev, torch.int64))

    def _local_tensors(self):
        dev = self._dets[0].device if self._dets else (self.device or torch.device("cpu"))
        if self._dets:
            dets = torch.cat(self._dets)
            classes = torch.cat(self._classes)
            counts = torch.tensor([d.shape[0] for d in self._dets], device=dev)
            slots = torch.repeat_interleave(torch.arange(len(self._dets), device=dev), counts)
        else:
            dets = torch.zeros(0, 5, device=dev)
            classes = slots = torch.zeros(0, dtype=torch.int64, device=dev)
        return dets, torch.stack([classes, slots], 1)

    def evaluate(self):
        dets, ints = self._local_tensors()
        keys = self._keys
        if self.distributed and comm.get_world_size() > 1:
            comm.synchronize()
            all_keys = comm.gather(keys, dst=0)  # small python lists (pickled)
            all_dets = gather_tensors(dets)
            all_ints = gather_tensors(ints)
            if not comm.is_main_process():
                return {}
            keys, offset = [], 0
            for k, i in zip(all_keys, all_ints):
                i[:, 1] += offset  # slot = position in the concatenated key list
                keys.extend(k)
                offset += len(k)
            dets, ints = torch.cat(all_dets), torch.cat(all_ints)
        if not keys:
            logger.warning("DetectionAPEvaluator: no predictions were processed for '%s'", self.dataset_name)
            return {}
        report, evaluated = self._compute(dets, ints, keys)
        self.report = report
        logger.info("\n" + format_ap_table(report))
        results = {"bbox": self._results_dict()}
        if self.coco_ap:
            self._add_pycocotools(report, results["bbox"], *evaluated)
        if self.output_dir:
            path = os.path.join(self.output_dir, f"ap_{self.dataset_name}.json")
            atomic_write_json(path, report)
            logger.info("AP report written to %s", path)
        return copy.deepcopy(results)

    def _compute(self, dets, ints, keys):
        records_by_key = {}
        for r in DatasetCatalog.get(self.dataset_name):
            records_by_key.setdefault(image_key(r), r)
        unknown = [k for k in keys if k not in records_by_key]
        if unknown:
            raise ValueError(
                f"DetectionAPEvaluator: {len(unknown)} processed image(s) are not in dataset "
                f"'{self.dataset_name}', e.g. {unknown[0]!r}"
            )
        order = evaluation_order(list(dict.fromkeys(keys)))
        if len(order) < len(keys):
            logger.warning(
                "DetectionAPEvaluator: %d image(s) were processed more than once; the first predictions are kept",
                len(keys) - len(order),
            )
        index_of = {k: i for i, k in enumerate(order)}
        seen, slot_to_image = set(), []
        for k in keys:
            slot_to_image.append(-1 if k in seen else index_of[k])
            seen.add(k)
        dev = dets.device
        det_images = torch.as_tensor(slot_to_image, dtype=torch.int64, device=dev)[ints[:, 1]]
        keep = det_images >= 0
        dets, det_classes, det_images = dets[keep], ints[keep, 0], det_images[keep]
        C = len(self.class_names)
        if det_classes.numel() and (int(det_classes.min()) < 0 or int(det_classes.max()) >= C):
            raise ValueError(
                f"DetectionAPEvaluator: predicted classes must be in [0, {C}) for '{self.dataset_name}'; got up "
                f"to {int(det_classes.max())} (does the model's NUM_CLASSES match the dataset's thing_classes?)"
            )
        gt = ground_truth_tensors(self.dataset_name, records_by_key, order, C, dev)
        result = compute_ap(
            dets[:, :4], dets[:, 4], det_classes, det_images,
            gt.boxes, gt.classes, gt.images, gt.crowd, gt.difficult,
            num_classes=C, metric=self.metric, iou_threshold=self.iou, max_dets=self.max_dets,
        )  # fmt: skip
        missing = len(records_by_key) - len(order)
        if missing:
            logger.info(
                "DetectionAPEvaluator: %d of %d images of '%s' were not processed; their GT is not counted",
                missing, len(records_by_key), self.dataset_name,
            )  # fmt: skip
        report = self._report(result, len(order))
        return report, (dets, det_classes, det_images, gt)

    def _report(self, result: APResult, num_images: int) -> Dict:
        def pct(x):
            x = float(x)
            return x * 100.0 if not math.isnan(x) else float("nan")

        classes = [
            dict(
                name=name,
                ap=pct(result.ap[c]),
                recall=pct(result.recall[c]),
                num_gt=int(result.num_gt[c]),
                num_ignored_gt=int(result.num_ignored_gt[c]),
                num_dets=int(result.num_dets[c]),
            )
            for c, name in enumerate(self.class_names)
        ]
        return dict(
            dataset=self.dataset_name,
            key=ap_key(self.iou),
            metric=self.metric,
            iou_threshold=self.iou,
            max_dets_per_image_and_class=result.max_dets,
            protocol=protocol_text(self.metric, self.iou, result.max_dets),
            num_images=num_images,
            mAP=pct(result.mean_ap()),
            classes=classes,
        )

    def _results_dict(self) -> Dict[str, float]:
        key = ap_key(self.iou)
        out = {key: self.report["mAP"]}
        for c in self.report["classes"]:
            out[f"{key}-{c['name']}"] = c["ap"]
        return out

    def _add_pycocotools(self, report, bbox, dets, det_classes, det_images, gt):
        from .coco_reference import pycocotools_ap

        C = len(self.class_names)
        ref = pycocotools_ap(
            dets[:, :4], dets[:, 4], det_classes, det_images,
            gt.boxes, gt.classes, gt.images, gt.crowd, gt.difficult,
            num_classes=C, num_images=report["num_images"],
        )  # fmt: skip
        for k in ("AP", "AP75", "APs", "APm", "APl"):
            bbox[k] = ref[k]
        for c, name in enumerate(self.class_names):
            bbox[f"AP-{name}"] = float(ref["per_class_AP"][c])
        report["coco"] = {k: ref[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        report["coco"]["per_class_AP"] = {n: float(ref["per_class_AP"][c]) for c, n in enumerate(self.class_names)}
        if METRIC_SPECS[self.metric].is_coco_ap50 and abs(self.iou - 0.5) < 1e-12:
            ours = np.array([c["ap"] for c in report["classes"]], dtype=np.float64)
            theirs = ref["per_class_AP50"]
            agree = np.array_equal(np.isnan(ours), np.isnan(theirs)) and np.nanmax(
                np.abs(np.nan_to_num(ours) - np.nan_to_num(theirs)), initial=0.0
            ) <= 1e-4
            report["coco"]["per_class_AP50_agrees"] = bool(agree)
            if not agree:
                logger.warning(
                    "DetectionAPEvaluator: torch AP50 %s differs from pycocotools' %s on '%s'",
                    np.round(ours, 4).tolist(), np.round(theirs, 4).tolist(), self.dataset_name,
                )  # fmt: skip
        logger.info(
            "pycocotools on '%s': AP=%.2f AP50=%.2f AP75=%.2f", self.dataset_name, ref["AP"], ref["AP50"], ref["AP75"]
        )


def build_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None) -> DetectionAPEvaluator:
    """The project's evaluator for ``dataset_name`` with ``cfg.TEST.AP_METRIC`` / ``cfg.TEST.AP_IOU``.

    ``output_dir`` defaults to ``cfg.OUTPUT_DIR/inference`` (detectron2's convention) when OUTPUT_DIR is set;
    ``cfg.TEST.AP_COCO`` adds the pycocotools AP@[.5:.95] numbers; keys a plain detectron2 config lacks take
    :class:`metaalign_det.options.EvalOptions`' defaults.
    """
    if output_dir is None and cfg.OUTPUT_DIR:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    opts = EvalOptions.from_config(cfg)
    return DetectionAPEvaluator(dataset_name, metric=opts.ap_metric, iou=opts.ap_iou, output_dir=output_dir,
                                coco_ap=opts.ap_coco)
