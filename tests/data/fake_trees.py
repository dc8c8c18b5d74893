"""Tiny dataset trees in the official file naming and encoding, with the boxes they must yield.

Cityscapes: 16-bit ``*_gtFine_instanceIds.png`` (instance = label_id * 1000 + k, crowd region = label_id,
stuff = label_id), RGB ``*_leftImg8bit.png`` and ``*_leftImg8bit_foggy_beta_{b}.png`` of the same size.
Sim10k: VOC2012 layout with JPEGs and XMLs holding car / motorbike / person boxes.
"""
import os

import numpy as np
from PIL import Image

H, W = 24, 40  # tiny images: every box below is exact in this frame

# label ids of the official table (cityscapesscripts.helpers.labels)
ROAD, SKY, PERSON, RIDER, CAR, TRUCK, BUS = 7, 23, 24, 25, 26, 27, 28
CARAVAN, TRAIN, MOTORCYCLE, BICYCLE = 29, 31, 32, 33
CS_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def _rect(arr, value, x0, y0, x1, y1):
    """Fill pixels x0..x1-1, y0..y1-1: the box this region yields is exactly [x0, y0, x1, y1]."""
    arr[y0:y1, x0:x1] = value


def cityscapes_scenes():
    """{split: {scene: (instanceIds array, [(class, [x0, y0, x1, y1], iscrowd), ...] expected)}}."""
    scenes = {"train": {}, "val": {}}

    a = np.full((H, W), ROAD, np.uint16)
    a[:6] = SKY
    _rect(a, CAR * 1000 + 0, 2, 8, 12, 14)
    _rect(a, PERSON * 1000 + 0, 14, 6, 17, 16)
    _rect(a, PERSON * 1000 + 1, 20, 9, 22, 15)
    _rect(a, CAR, 25, 10, 35, 20)  # crowd region of cars ("car group")
    _rect(a, CARAVAN * 1000 + 0, 30, 1, 38, 5)  # has instances but ignoreInEval: skipped
    scenes["train"]["aachen/aachen_000000_000019"] = (a, [
        ("car", [2, 8, 12, 14], 0), ("person", [14, 6, 17, 16], 0), ("person", [20, 9, 22, 15], 0),
        ("car", [25, 10, 35, 20], 1)])

    b = np.full((H, W), ROAD, np.uint16)  # no instances at all: kept, with no annotations
    b[:10] = SKY
    scenes["train"]["aachen/aachen_000001_000019"] = (b, [])

    c = np.full((H, W), ROAD, np.uint16)
    _rect(c, BICYCLE * 1000 + 0, 1, 1, 6, 4)
    _rect(c, RIDER * 1000 + 0, 2, 4, 4, 12)
    # one truck split in two visible parts by an occluding pole (stuff id 17): the box spans both
    _rect(c, TRUCK * 1000 + 0, 10, 5, 30, 15)
    _rect(c, 17, 18, 0, 20, 24)
    # an L-shaped car: the box is the extent of all its pixels
    _rect(c, CAR * 1000 + 3, 31, 18, 39, 20)
    _rect(c, CAR * 1000 + 3, 31, 12, 33, 18)
    _rect(c, PERSON * 1000 + 7, 0, 23, 1, 24)  # a one-pixel person (detectron2's mask path drops it)
    scenes["train"]["bremen/bremen_000000_000019"] = (c, [
        ("bicycle", [1, 1, 6, 4], 0), ("rider", [2, 4, 4, 12], 0), ("truck", [10, 5, 30, 15], 0),
        ("car", [31, 12, 39, 20], 0), ("person", [0, 23, 1, 24], 0)])

    d = np.full((H, W), ROAD, np.uint16)
    _rect(d, BUS * 1000 + 0, 0, 0, 15, 10)
    _rect(d, TRAIN * 1000 + 0, 16, 0, 40, 8)
    _rect(d, MOTORCYCLE * 1000 + 2, 5, 14, 9, 18)
    _rect(d, CAR * 1000 + 1, 20, 12, 30, 22)
    _rect(d, PERSON, 32, 12, 36, 20)  # crowd of persons
    scenes["val"]["frankfurt/frankfurt_000000_000294"] = (d, [
        ("person", [32, 12, 36, 20], 1), ("car", [20, 12, 30, 22], 0), ("bus", [0, 0, 15, 10], 0),
        ("train", [16, 0, 40, 8], 0), ("motorcycle", [5, 14, 9, 18], 0)])

    e = np.full((H, W), ROAD, np.uint16)
    _rect(e, CAR * 1000 + 0, 4, 4, 9, 9)
    scenes["val"]["lindau/lindau_000000_000019"] = (e, [("car", [4, 4, 9, 9], 0)])
    return scenes


BETAS = ("0.02", "0.01", "0.005")


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def make_cityscapes(root, foggy=True, clear=True):
    """Write ``root/cityscapes/...``; return the scenes (see :func:`cityscapes_scenes`)."""
    cs = os.path.join(root, "cityscapes")
    scenes = cityscapes_scenes()
    k = 0
    for split, per_scene in scenes.items():
        for scene, (ids, _) in per_scene.items():
            city, base = scene.split("/")
            gt_dir = os.path.join(cs, "gtFine", split, city)
            os.makedirs(gt_dir, exist_ok=True)
            Image.fromarray(ids.astype(np.uint16)).save(os.path.join(gt_dir, f"{base}_gtFine_instanceIds.png"))
            if clear:
                d = os.path.join(cs, "leftImg8bit", split, city)
                os.makedirs(d, exist_ok=True)
                Image.fromarray(_rgb(k)).save(os.path.join(d, f"{base}_leftImg8bit.png"))
            if foggy:
                d = os.path.join(cs, "leftImg8bit_foggy", split, city)
                os.makedirs(d, exist_ok=True)
                for beta in BETAS:
                    Image.fromarray(_rgb(k + 100)).save(os.path.join(d, f"{base}_leftImg8bit_foggy_beta_{beta}.png"))
            k += 1
    return scenes


def expected_records(scenes, split, classes=CS_CLASSES):
    """{scene: sorted [(category_id, box, iscrowd)]} restricted to ``classes``."""
    out = {}
    for scene, (_, objs) in scenes[split].items():
        out[scene] = sorted((classes.index(c), [float(v) for v in box], crowd)
                            for c, box, crowd in objs if c in classes)
    return out


def as_comparable(records, scene_of):
    """{scene: sorted [(category_id, box, iscrowd)]} of loaded dataset dicts."""
    out = {}
    for r in records:
        out.setdefault(scene_of(r["file_name"]), sorted(
            (a["category_id"], [float(v) for v in a["bbox"]], a["iscrowd"]) for a in r["annotations"]))
    return out


def scene_of_path(path):
    city = os.path.basename(os.path.dirname(path))
    base = os.path.basename(path).split("_leftImg8bit")[0]
    return f"{city}/{base}"


# ----------------------------------------------------------------------------------------------------------
# VOC / Sim10k

SIM_IMAGES = {
    # id: (width, height, [(name, xmin, ymin, xmax, ymax, difficult)])  (VOC: 1-based inclusive)
    "3384645": (40, 24, [("car", 1, 1, 10, 8, 0), ("motorbike", 12, 3, 15, 9, 0), ("car", 20, 5, 40, 24, 1)]),
    "3384646": (40, 24, [("person", 5, 5, 8, 15, 0)]),  # no car: kept, empty
    "3384700": (40, 24, [("car", 3, 4, 7, 9, 0)]),
}


def _voc_xml(image_id, w, h, objects, with_size=True):
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1, d in objects)
    size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if with_size else ""
    return f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>{size}{objs}</annotation>"


def make_voc(voc_root, images=None, split="trainval", listed=None):
    """Write a VOC2012-layout tree; ``listed`` (default: all ids) goes to ImageSets/Main/<split>.txt."""
    images = SIM_IMAGES if images is None else images
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc_root, sub), exist_ok=True)
    for k, (image_id, (w, h, objects)) in enumerate(images.items()):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(voc_root, "JPEGImages", f"{image_id}.jpg"))
        with open(os.path.join(voc_root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(_voc_xml(image_id, w, h, objects))
    with open(os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in (listed if listed is not None else images)))
    return images


def make_sim10k(root):
    return make_voc(os.path.join(root, "sim10k", "VOC2012"))


def write_coco(path, images, categories, annotations):
    """A minimal COCO instances JSON."""
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": i, "name": n} for i, n in categories]}, f)


def write_image(path, w, h, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
