"""Drawing predictions and ground truth with detectron2's Visualizer, side by side, into PNGs.

Images are numpy uint8 arrays [H, W, 3] in RGB order throughout. A panel drawn at ``scale`` has exactly
``int(H * scale)`` x ``int(W * scale)`` pixels, so panels of one image always line up.
"""
import os
from typing import List, Optional, Sequence

import cv2
import numpy as np
from detectron2.structures import BoxMode
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

from .io import atomic_write_bytes

__all__ = [
    "draw_predictions", "draw_ground_truth", "class_colors", "side_by_side", "write_png", "panel_size", "titles_for"
]


def panel_size(height: int, width: int, scale: float = 1.0):
    """(rows, cols) of a panel drawn from an image of ``height`` x ``width`` at ``scale``."""
    return int(height * scale), int(width * scale)


def _finish(vis_image, title: Optional[str], shape) -> np.ndarray:
    if title:
        # white text on a dark box, top-left; font size follows detectron2's default for this image size
        vis_image.ax.text(
            4, 4, title, size=max(8, 0.03 * max(shape) * vis_image.scale), family="sans-serif",
            color="white", va="top", ha="left",
            bbox={"facecolor": "black", "alpha": 0.7, "pad": 2, "edgecolor": "none"},
        )  # fmt: skip
    out = vis_image.get_image()
    rows, cols = panel_size(shape[0], shape[1], vis_image.scale)
    if out.shape[:2] != (rows, cols):  # matplotlib rounding can be off by one pixel
        out = cv2.resize(out, (cols, rows), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)


def class_colors(num_classes: int) -> List[np.ndarray]:
    """One fixed RGB colour (floats in [0, 1]) per class, detectron2's colormap: the same class has the same
    colour in every panel (detectron2's own draw_* pick random colours per call)."""
    palette = colormap(rgb=True, maximum=1)
    return [palette[c % len(palette)] for c in range(num_classes)]


def _class_names(metadata, classes):
    names = metadata.get("thing_classes", None) or []
    return [names[c] if c < len(names) else str(c) for c in classes]


def draw_predictions(image_rgb: np.ndarray, instances, metadata, score_threshold: float = 0.5,
                     title: Optional[str] = None, scale: float = 1.0) -> np.ndarray:
    """Boxes labelled "class score%" of ``instances`` (pred_boxes / scores / pred_classes in the coordinates of
    ``image_rgb``) with score >= ``score_threshold``; returns the RGB panel."""
    inst = instances.to("cpu")
    inst = inst[inst.scores >= score_threshold]
    classes = inst.pred_classes.tolist()
    names = _class_names(metadata, classes)
    labels = [f"{n} {100 * s:.0f}%" for n, s in zip(names, inst.scores.tolist())]
    palette = class_colors(max(classes, default=0) + 1)
    vis = Visualizer(image_rgb, metadata, scale=scale)
    out = vis.overlay_instances(
        boxes=inst.pred_boxes.tensor.numpy(), labels=labels, assigned_colors=[palette[c] for c in classes]
    )
    return _finish(out, title, image_rgb.shape)


def draw_ground_truth(image_rgb: np.ndarray, record: dict, metadata, title: Optional[str] = None,
                      scale: float = 1.0) -> np.ndarray:
    """The annotations of a dataset ``record`` (detectron2 dataset dict), labelled with the class name and
    "(crowd)" / "(difficult)" for ignored ones; returns the RGB panel."""
    anns = record.get("annotations", [])
    boxes = np.array(
        [BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS) for a in anns],
        dtype=np.float64,
    ).reshape(-1, 4)
    classes = [int(a["category_id"]) for a in anns]
    names = _class_names(metadata, classes)
    labels = [
        n + (" (crowd)" if a.get("iscrowd", 0) else " (difficult)" if a.get("difficult", 0) else "")
        for n, a in zip(names, anns)
    ]
    palette = class_colors(max(classes, default=0) + 1)
    vis = Visualizer(image_rgb, metadata, scale=scale)
    out = vis.overlay_instances(boxes=boxes, labels=labels, assigned_colors=[palette[c] for c in classes])
    return _finish(out, title, image_rgb.shape)


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate equally tall RGB panels left to right: [H, sum(W_i), 3]."""
    heights = {p.shape[0] for p in panels}
    if len(heights) != 1:
        raise ValueError(f"side_by_side: panels have different heights {sorted(heights)}")
    return np.concatenate(list(panels), axis=1)


def write_png(path: str, image_rgb: np.ndarray) -> str:
    """Encode an RGB uint8 image as PNG and write it atomically; returns ``path``."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path} as PNG")
    return atomic_write_bytes(path, buf.tobytes())


def titles_for(weights: Sequence[str], labels: Optional[List[str]]) -> List[str]:
    """Panel titles: the given labels, else each checkpoint's file name."""
    if labels:
        if len(labels) != len(weights):
            raise ValueError(f"--labels: {len(labels)} given for {len(weights)} checkpoints")
        return list(labels)
    return [os.path.basename(w) for w in weights]
