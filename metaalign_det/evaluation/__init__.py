"""Evaluation: per-class AP50 on the device (three conventions), its table, and the pycocotools reference.

Public API:
    DetectionAPEvaluator, build_evaluator -- the detectron2 DatasetEvaluator and the trainer's factory
    compute_ap, APResult, METRICS        -- the vectorised torch AP computation
    format_ap_table, ap_table_title, ap_key, protocol_text -- the printed table / protocol text
    pycocotools_ap                       -- pycocotools on the same tensors (AP@[.5:.95], cross-check)
    check_weights_fit, load_checked_weights, WeightsMismatchError -- does a checkpoint fit a model?
    BatchPredictor, model_classes, coco_results -- detection on arbitrary images (tools/predict.py)
"""
from .. import compat

compat.apply()  # before any detectron2 import; without detectron2: ImportError saying how to get it

from .ap import METRICS, APResult, compute_ap
from .coco_reference import pycocotools_ap
from .evaluator import DetectionAPEvaluator, build_evaluator, unlabelled_reason
from .predictor import BatchPredictor, coco_results, model_classes
from .table import ap_key, ap_table_title, format_ap_table, protocol_text
from .weights import EvalWeights, WeightsMismatchError, check_weights_fit, load_checked_weights, load_eval_weights

__all__ = [
    "METRICS",
    "APResult",
    "compute_ap",
    "pycocotools_ap",
    "DetectionAPEvaluator",
    "build_evaluator",
    "ap_key",
    "ap_table_title",
    "format_ap_table",
    "protocol_text",
    "WeightsMismatchError",
    "check_weights_fit",
    "load_checked_weights",
    "load_eval_weights",
    "unlabelled_reason",
    "EvalWeights",
    "BatchPredictor",
    "model_classes",
    "coco_results",
]
