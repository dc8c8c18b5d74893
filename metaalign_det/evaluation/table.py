"""The per-class AP table: its title names the metric, the IoU and the dataset, so a printed number cannot
be mistaken for COCO AP@[.5:.95] or for another Foggy split."""
import math
from typing import Dict, List

from tabulate import tabulate

from .ap import METRIC_SPECS

__all__ = ["ap_key", "ap_table_title", "format_ap_table", "protocol_text"]

def ap_key(iou: float) -> str:
    """Result key of AP at one IoU: 0.5 -> "AP50", 0.75 -> "AP75" (detectron2's naming)."""
    return f"AP{int(round(float(iou) * 100))}"


def ap_table_title(metric: str, iou: float, dataset_name: str, num_classes: int) -> str:
    """E.g. "AP50 (coco101, IoU=0.50) on foggy_cityscapes_det_val_beta0.02 — 8 classes"."""
    plural = "class" if num_classes == 1 else "classes"
    return f"{ap_key(iou)} ({metric}, IoU={float(iou):.2f}) on {dataset_name} — {num_classes} {plural}"


def protocol_text(metric: str, iou: float, max_dets) -> str:
    """One sentence stating how the AP was computed (goes into reports next to the numbers)."""
    text = METRIC_SPECS[metric].protocol.format(iou=float(iou), max_dets=max_dets)
    return (
        f"{text}; crowd and difficult GT ignored (never misses; detections on them dropped); boxes XYXY in "
        f"absolute pixels, IoU without the VOC +1; classes without GT are excluded from the mean"
    )


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def format_ap_table(report: Dict) -> str:
    """Title line + one row per class + the mean, from an evaluator report (see ``DetectionAPEvaluator``).

    A class without GT shows "-" (its AP is undefined and it is not part of the mean).
    """
    key = report["key"]
    rows: List[list] = []
    for c in report["classes"]:
        rows.append([c["name"], _pct(c["ap"]), _pct(c["recall"]), c["num_gt"], c["num_ignored_gt"], c["num_dets"]])
    n_valid = sum(1 for c in report["classes"] if c["ap"] is not None and not math.isnan(c["ap"]))
    rows.append([f"mean ({n_valid} with GT)", _pct(report["mAP"]), "", "", "", ""])
    table = tabulate(
        rows,
        headers=["class", key, "recall", "GT", "ignored GT", "detections"],
        tablefmt="pipe",
        colalign=("left", "right", "right", "right", "right", "right"),
        disable_numparse=True,
    )
    title = ap_table_title(report["metric"], report["iou_threshold"], report["dataset"], len(report["classes"]))
    return f"{title}, {report['num_images']} images\n{table}"
