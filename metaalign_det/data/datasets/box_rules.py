"""The rule for boxes that do not fit their image, applied to every labelled set a user brings (pair
manifests, ``--coco-json``), and reported once per dataset load (not per image).

Rule, in the image's pixel frame (width x height from the record, i.e. as training reads the image):
* a box is clipped to the image rectangle ``[0, width] x [0, height]``;
* a box with less than ``MIN_SIDE`` (1) pixel of width or height left after clipping -- zero or negative
  width/height, wholly outside the image, or non-finite coordinates -- is dropped (it cannot be matched by
  any anchor or proposal and would only add noise; detectron2 drops empty boxes later anyway, silently).
Crowd boxes follow the same rule. Rotated boxes (``XYWHA_ABS``) are left as they are.
"""
import logging
import math
from typing import Dict, List

from detectron2.structures import BoxMode

__all__ = ["MIN_SIDE", "apply_box_rule"]

logger = logging.getLogger(__name__)

MIN_SIDE = 1.0  # pixels: a box narrower or lower than this after clipping is dropped

_REPORTED = set()  # (context, clipped, dropped) already warned about in this process: once per dataset


def apply_box_rule(records: List[dict], context: str) -> List[dict]:
    """``records`` with every annotation's box clipped to its image, and boxes without area dropped (module
    docstring); one warning with the counts and the first example of each kind (once per ``context`` and
    counts in a process: loading the same set again does not repeat it). Records without
    ``annotations`` (unlabelled) pass unchanged; the input list and dicts are not modified."""
    clipped = dropped = 0
    first: Dict[str, str] = {}
    out = []
    for r in records:
        anns = r.get("annotations")
        if not anns:
            out.append(r)
            continue
        W, H = r.get("width"), r.get("height")
        kept = []
        for a in anns:
            mode = a.get("bbox_mode", BoxMode.XYWH_ABS)
            if mode == BoxMode.XYWHA_ABS or W is None or H is None:
                kept.append(a)
                continue
            try:
                x0, y0, x1, y1 = (float(v) for v in BoxMode.convert(list(a["bbox"]), mode, BoxMode.XYXY_ABS))
            except (TypeError, ValueError, KeyError):  # not 4 numbers
                x0 = y0 = x1 = y1 = float("nan")
            finite = all(math.isfinite(v) for v in (x0, y0, x1, y1))
            cx0, cy0 = (min(max(x0, 0.0), W), min(max(y0, 0.0), H)) if finite else (0.0, 0.0)
            cx1, cy1 = (min(max(x1, 0.0), W), min(max(y1, 0.0), H)) if finite else (0.0, 0.0)
            if not finite or cx1 - cx0 < MIN_SIDE or cy1 - cy0 < MIN_SIDE:
                dropped += 1
                first.setdefault("dropped", f"{r.get('file_name')}: {a.get('bbox')}")
                continue
            if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
                clipped += 1
                first.setdefault("clipped", f"{r.get('file_name')}: {a.get('bbox')}")
                a = dict(a, bbox=list(BoxMode.convert([cx0, cy0, cx1, cy1], BoxMode.XYXY_ABS, mode)))
            kept.append(a)
        out.append(dict(r, annotations=kept) if len(kept) != len(anns) or kept != anns else r)
    if (clipped or dropped) and (context, clipped, dropped) not in _REPORTED:
        _REPORTED.add((context, clipped, dropped))
        parts = []
        if clipped:
            parts.append(f"{clipped} box(es) reaching outside the image clipped to it (first: {first['clipped']})")
        if dropped:
            parts.append(f"{dropped} box(es) without {MIN_SIDE:g} px of width and height inside the image dropped "
                         f"(first: {first['dropped']})")
        logger.warning("%s: %s", context, "; ".join(parts))
    return out
