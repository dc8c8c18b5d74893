"""Pascal-VOC-layout datasets (``Annotations/*.xml``, ``JPEGImages/*``, ``ImageSets/Main/<split>.txt``).

Our own parser: detectron2 0.6's ``load_voc_instances`` calls ``np.loadtxt(..., dtype=np.str)``, which
numpy >= 1.24 no longer has. Box convention as detectron2's VOC loader: VOC's 1-based inclusive pixel
coordinates become ``[xmin - 1, ymin - 1, xmax, ymax]`` in XYXY_ABS. ``difficult`` is kept as an annotation
flag (evaluators ignore those boxes; training uses them like any other box, as detectron2 does).

The XMLs of a split are parsed once into a COCO-JSON cache holding every class name found; the class list
of the dataset being registered is applied when loading (unknown classes are an error unless a class map
says what to do with them).
"""
import logging
import os
import xml.etree.ElementTree as ET
from typing import List, Mapping, Optional, Sequence, Tuple

from .coco_cache import cache_dir_for, coco_to_records, fingerprint_files, load_or_build
from .image_files import check_image_files, oriented_size

__all__ = ["parse_voc_xml", "list_voc_ids", "load_voc_coco", "load_voc_records"]

logger = logging.getLogger(__name__)

_CACHE_KIND = "voc_xml"


def parse_voc_xml(path: str) -> dict:
    """``{"height", "width", "objects": [{"name", "bbox" (XYXY_ABS), "difficult"}]}`` of one VOC XML.

    Height/width are None when the XML has no usable ``<size>`` (the caller reads the image header).
    """
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"{path}: not a readable VOC annotation XML ({e})") from None
    root = tree.getroot()
    size = root.find("size")
    h = w = None
    if size is not None:
        try:
            w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        except (TypeError, ValueError):
            h = w = None
        if not w or not h:
            h = w = None
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise ValueError(f"{path}: an <object> lacks <name> or <bndbox>")
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: object {name!r} has a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
        difficult = obj.findtext("difficult")
        objects.append({"name": name, "bbox": [x0 - 1.0, y0 - 1.0, x1, y1],
                        "difficult": int(float(difficult)) if difficult not in (None, "") else 0})
    return {"height": h, "width": w, "objects": objects}


def list_voc_ids(voc_root: str, split: str, list_hint: str = "") -> Tuple[List[str], str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt`` (one per line, first token)."""
    if not os.path.isdir(voc_root):
        raise FileNotFoundError(f"VOC root {voc_root} does not exist; see datasets/README.md")
    list_file = os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"missing split {split!r}: {list_file} does not exist{list_hint}")
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"empty split: {list_file} lists no image ids")
    return ids, list_file


def _build_voc_coco(voc_root, ids, ann_paths, image_dir, image_ext):
    from PIL import Image
    from tqdm import tqdm

    images, annotations, names = [], [], {}
    parsed = []
    for i, (image_id, ann) in enumerate(tqdm(list(zip(ids, ann_paths)), desc=f"VOC XML {os.path.basename(voc_root)}",
                                             unit="xml", mininterval=1.0)):
        d = parse_voc_xml(ann)
        file_name = os.path.join(image_dir, image_id + image_ext)
        if d["height"] is None:  # no <size>: read it from the image header
            try:
                with Image.open(os.path.join(voc_root, file_name)) as im:
                    d["width"], d["height"] = oriented_size(im)  # as training reads it (EXIF orientation)
            except OSError:
                d["width"] = d["height"] = 0  # absent/corrupt: reported by check_image_files at load
        parsed.append((i, image_id, ann, file_name, d))
        for o in d["objects"]:
            names.setdefault(o["name"], len(names))
    cat_ids = {n: k + 1 for k, n in enumerate(sorted(names))}
    for i, image_id, ann, file_name, d in parsed:
        images.append({"id": i, "file_name": file_name, "height": d["height"], "width": d["width"],
                       "voc_id": image_id, "ann_file": os.path.relpath(ann, voc_root)})
        for o in d["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat_ids[o["name"]],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
                                "area": (x1 - x0) * (y1 - y0), "difficult": o["difficult"]})
    categories = [{"id": k, "name": n} for n, k in cat_ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def load_voc_coco(voc_root: str, split: str, image_dir: str = "JPEGImages", ann_dir: str = "Annotations",
                  image_ext: str = ".jpg", list_hint: str = "") -> dict:
    """The split's XMLs as a COCO dict (every class found, sorted by name), through the cache."""
    ids, list_file = list_voc_ids(voc_root, split, list_hint)
    ann_paths = [os.path.join(voc_root, ann_dir, f"{i}.xml") for i in ids]
    missing = [p for p in ann_paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{list_file}: {len(missing)} of {len(ids)} listed ids have no annotation XML, "
                                f"e.g. {missing[0]}")
    fingerprint = fingerprint_files([list_file] + ann_paths, voc_root)
    cache_file = os.path.join(cache_dir_for(voc_root), f"voc_{split}_{ann_dir}_{image_dir}{image_ext}.json")
    return load_or_build(cache_file, _CACHE_KIND, fingerprint,
                         lambda: _build_voc_coco(voc_root, ids, ann_paths, image_dir, image_ext))


def load_voc_records(
    voc_root: str,
    split: str,
    classes: Sequence[str],
    class_map: Optional[Mapping[str, Optional[str]]] = None,
    drop_other_classes: bool = False,
    image_dir: str = "JPEGImages",
    ann_dir: str = "Annotations",
    image_ext: str = ".jpg",
    context: Optional[str] = None,
    list_hint: str = "",
) -> List[dict]:
    """Detectron2 dataset dicts of a VOC split; every listed image is kept, also those without boxes.

    A class found in the XMLs that is neither in ``classes`` nor in ``class_map`` is an error naming the
    XML, unless ``drop_other_classes`` (then its boxes are dropped, as Sim10k's non-car boxes are).
    """
    context = context or f"VOC {voc_root} ({split})"
    coco = load_voc_coco(voc_root, split, image_dir, ann_dir, image_ext, list_hint)
    class_map = dict(class_map or {})
    if drop_other_classes:
        dropped = {c["name"]: None for c in coco["categories"]
                   if c["name"] not in classes and c["name"] not in class_map}
        if dropped:
            names = {c["id"]: c["name"] for c in coco["categories"]}
            n = sum(1 for a in coco["annotations"] if names[a["category_id"]] in dropped)
            logger.info("%s: dropped %d boxes of classes %s (not in %s)", context, n, sorted(dropped), list(classes))
        class_map.update(dropped)
    records = coco_to_records(coco, voc_root, classes, class_map, context, require_same_classes=False)
    return check_image_files(records, context)
