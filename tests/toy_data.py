"""Tiny generated detection datasets for tests: coloured rectangles on a textured background, written as
PNG + COCO JSON and registered with detectron2's ``register_coco_instances`` (the real COCO path).

The "foggy" domain blends every image towards grey (t = 0.45), the shift the DA losses should see.
"""
import json
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

CLASSES = ["box", "bar", "blob"]
_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230)]


def make_toy_coco(root, n_images=4, size=(96, 128), seed=0, foggy=False, n_boxes=2, empty_first=False):
    """Write ``n_images`` images of ``size`` (H, W) under ``root`` + ``root/ann.json``; return the JSON path.

    Every image has exactly ``n_boxes`` objects (equal ROI counts per image keep multi-process losses equal
    to one-process ones), except the first one when ``empty_first``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    os.makedirs(root, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(60, 120, size=(h, w, 3)).astype(np.float32)
        k = 0 if (empty_first and i == 0) else n_boxes
        for _ in range(k):
            c = int(rng.integers(len(CLASSES)))
            bw, bh = int(rng.integers(w // 6, w // 3)), int(rng.integers(h // 6, h // 3))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y0 : y0 + bh, x0 : x0 + bw] = _COLOURS[c]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                         "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": 0})
        if foggy:
            img = 0.45 * img + 0.55 * 180.0
        name = f"img_{i:03d}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(root, name))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    cats = [{"id": j + 1, "name": n} for j, n in enumerate(CLASSES)]
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return path


def register_toy(name, root, **kwargs):
    """Generate (if needed) and register ``name``; idempotent within a process while its files exist.

    A name registered by an earlier test whose tmp_path pytest has removed since (passed tests' folders are
    not kept) is registered again under ``root``: the same generated data, in a folder that exists."""
    if name in DatasetCatalog.list():
        json_file = MetadataCatalog.get(name).get("json_file")
        if json_file is None or os.path.isfile(json_file):
            return name
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    path = make_toy_coco(root, **kwargs)
    register_coco_instances(name, {}, path, root)
    MetadataCatalog.get(name).thing_classes = list(CLASSES)
    return name


def register_toy_pair(tmpdir, prefix="toy", n_images=4, size=(96, 128), n_boxes=2):
    """Register ``{prefix}_src`` (clear, labelled) and ``{prefix}_tgt`` (foggy) under ``tmpdir``."""
    src = register_toy(f"{prefix}_src", os.path.join(tmpdir, f"{prefix}_src"), n_images=n_images,
                       size=size, seed=1, n_boxes=n_boxes)
    tgt = register_toy(f"{prefix}_tgt", os.path.join(tmpdir, f"{prefix}_tgt"), n_images=n_images,
                       size=size, seed=2, foggy=True, n_boxes=n_boxes)
    return src, tgt
