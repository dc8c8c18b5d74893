"""A generated dataset on disk: its stamp, its files, and the swap that puts a fresh copy in place.

Shared by the two generated pairs (the clear -> foggy demo pair, ``synthetic.py``, and the sim -> real pair,
``sim2real.py``). A generated folder is valid when its ``stamp.json`` holds the digest of the parameters that
should have made it; the stamp is written last, so a folder without a valid stamp is an interrupted one.
Generation goes to a temporary sibling folder which is then swapped in (:func:`ensure_generated`), so a
crash never leaves a half-written folder behind a valid stamp, and concurrent processes (DDP ranks) cannot
corrupt it.
"""
import json
import logging
import os
import shutil
import time
from typing import Callable, Iterable, Optional, Sequence

import cv2
import numpy as np

__all__ = ["STAMP_FILE", "read_stamp_digest", "write_png", "coco_annotation", "progress", "ensure_generated"]

logger = logging.getLogger(__name__)

STAMP_FILE = "stamp.json"


def read_stamp_digest(path: str) -> Optional[str]:
    """The digest recorded in ``<path>/stamp.json``, or None when there is none (or it is unreadable)."""
    try:
        with open(os.path.join(path, STAMP_FILE)) as f:
            return json.load(f).get("digest")
    except (OSError, ValueError, AttributeError):
        return None


def write_png(path: str, rgb_or_gray: np.ndarray) -> None:
    """Write an HxWx3 RGB (or HxW grey, uint8 / uint16) array as a PNG (OpenCV's default compression)."""
    arr = rgb_or_gray[..., ::-1] if rgb_or_gray.ndim == 3 else rgb_or_gray
    if not cv2.imwrite(path, np.ascontiguousarray(arr)):
        raise OSError(f"could not write {path}")


def coco_annotation(ann_id: int, image_id: int, box: Sequence[float], category_id: int, iscrowd: int = 0) -> dict:
    """One COCO annotation (1-based ``category_id``) of an XYXY pixel ``box`` (stored as XYWH with its area)."""
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": (box[2] - box[0]) * (box[3] - box[1]),
    }


def progress(jobs: Iterable, desc: str) -> Iterable:
    """``jobs`` with a progress bar (tqdm, once a second) when tqdm is there."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; the bar is cosmetic
        return jobs
    return tqdm(jobs, desc=desc, unit="img", mininterval=1.0)


def ensure_generated(out: str, digest: str, generate: Callable[[str], None], what: str) -> str:
    """Return ``out`` after making sure it holds a copy stamped ``digest``: reuse it, or run ``generate(tmp)``
    (which must write the stamp last) into a temporary sibling folder and swap that in.

    ``what`` names the dataset in the log lines ("synthetic pair", ...): one line when generating (first time,
    stale stamp, or no valid stamp) and one with the time it took.
    """
    have = read_stamp_digest(out)
    if have == digest:
        return out
    if have is None and os.path.exists(out) and os.listdir(out):
        logger.info("%s at %s has no valid stamp: regenerating", what, out)
    elif have is not None:
        logger.info("%s at %s is stale (stamp %s, parameters give %s): regenerating", what, out, have, digest)
    else:
        logger.info("generating the %s under %s (once)", what, out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t0 = time.perf_counter()
    generate(tmp)
    if read_stamp_digest(out) == digest:  # another process (a DDP rank) finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    old = None
    if os.path.exists(out):
        old = f"{out}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:  # another process swapped in its copy first: use it if valid
        shutil.rmtree(tmp, ignore_errors=True)
        if read_stamp_digest(out) != digest:
            raise
    if old:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("%s written in %.1f s", what, time.perf_counter() - t0)
    return out
