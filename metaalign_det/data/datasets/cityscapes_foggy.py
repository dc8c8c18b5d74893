"""Cityscapes and Foggy Cityscapes as box-detection datasets (8 classes or car only).

Files (official names; ``<cs>`` = ``$DETECTRON2_DATASETS/cityscapes``)::

    <cs>/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png                    clear images
    <cs>/leftImg8bit_foggy/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit_foggy_beta_{b}.png  b in 0.005/0.01/0.02
    <cs>/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_instanceIds.png                  labels of both

Boxes come from the *visible* pixels of each instance in ``*_gtFine_instanceIds.png`` (16-bit: value =
label_id * 1000 + k for an instance, = label_id for a region without instances, crowd regions of
instance classes included), like detectron2's ``load_cityscapes_instances(from_json=False)`` and ALDI:

* classes: the official label table (``cityscapesscripts.helpers.labels``), ``hasInstances and not
  ignoreInEval``, in table order: person, rider, car, truck, bus, train, motorcycle, bicycle;
* ids < 1000 of those classes are crowd regions: kept as ``iscrowd=1`` annotations (training mappers drop
  them, evaluators ignore detections on them), never as objects;
* caravan / trailer (instances but ``ignoreInEval``) and stuff labels are skipped, as detectron2 does;
* an id whose label is not in the table is an error naming the file;
* box convention: ``[min_x, min_y, max_x + 1, max_y + 1]`` in XYXY_ABS, i.e. the box *covers* the mask's
  pixels (pixel i spans [i, i+1)), as COCO, detectron2's Cityscapes JSON path and its VOC loader do.
  detectron2's instance-mask path writes ``[min_x, min_y, max_x, max_y]`` (one pixel less on the right and
  bottom) and drops one-pixel-wide instances; the tests pin the difference exactly.

Masks are decoded once per split into a COCO-JSON cache (``coco_cache.load_or_build``), shared by the clear,
foggy and car-only names; listing images and checking their headers is done at every load.
"""
import logging
import multiprocessing as mp
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .coco_cache import cache_dir_for, coco_to_records, fingerprint_files, load_or_build
from .image_files import check_image_files

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "CITYSCAPES_THING_LABEL_IDS",
    "FOGGY_BETAS",
    "ARCHIVES",
    "normalize_beta",
    "list_cityscapes_images",
    "list_gtfine_instance_files",
    "instance_file_to_annotations",
    "load_gtfine_annotations",
    "load_cityscapes_detection",
]

logger = logging.getLogger(__name__)


def _thing_labels():
    from cityscapesscripts.helpers.labels import labels

    return [lab for lab in labels if lab.hasInstances and not lab.ignoreInEval]


CITYSCAPES_THING_CLASSES = tuple(lab.name for lab in _thing_labels())
CITYSCAPES_THING_LABEL_IDS = tuple(lab.id for lab in _thing_labels())
# The three Foggy Cityscapes releases (attenuation beta in 1/m), densest first.
FOGGY_BETAS = ("0.02", "0.01", "0.005")
# Where each tree comes from (https://www.cityscapes-dataset.com/downloads/, login needed).
ARCHIVES = {
    "leftImg8bit": "leftImg8bit_trainvaltest.zip",
    "gtFine": "gtFine_trainvaltest.zip",
    "leftImg8bit_foggy": "leftImg8bit_trainvaltest_foggy.zip",
}
DOWNLOAD_PAGE = "https://www.cityscapes-dataset.com/downloads/"

_CLEAR_SUFFIX = "_leftImg8bit.png"
_FOGGY_RE = re.compile(r"^(?P<base>.+)_leftImg8bit_foggy_beta_(?P<beta>[0-9.]+)\.png$")
_GT_SUFFIX = "_gtFine_instanceIds.png"
_CACHE_KIND = "cityscapes_gtFine_instanceIds"


def normalize_beta(beta: Union[str, float]) -> str:
    """``0.02`` / ``"0.02"`` / ``"0.020"`` -> ``"0.02"``; anything but the three released betas -> ValueError."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        value = None
    for b in FOGGY_BETAS:
        if value is not None and abs(value - float(b)) < 1e-9:
            return b
    raise ValueError(f"fog beta must be one of {', '.join(sorted(FOGGY_BETAS, key=float))} "
                     f"(the Foggy Cityscapes releases); got {beta!r}")


def _require_dir(path, what, archive):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"missing {what}: {path} does not exist (it comes from {archive}, {DOWNLOAD_PAGE}; "
                                f"see datasets/README.md)")


def _require_root(cs_root):
    if not os.path.isdir(cs_root):
        raise FileNotFoundError(
            f"Cityscapes root {cs_root} does not exist: set DETECTRON2_DATASETS to the folder holding "
            f"cityscapes/ (now {os.getenv('DETECTRON2_DATASETS', 'unset: datasets/')}); see datasets/README.md"
        )


def list_cityscapes_images(
    cs_root: str, split: str, fog_betas: Optional[Sequence[Union[str, float]]] = None
) -> List[Tuple[str, str, Optional[str]]]:
    """``[(scene, image_path, beta or None)]`` sorted, for the clear images or the foggy ones of ``fog_betas``.

    ``scene`` is ``"{city}/{city}_{seq}_{frame}"``. Files that do not follow the naming, and foggy files of
    other betas than requested ones, are skipped (a warning counts those with unknown betas or names).
    """
    _require_root(cs_root)
    if fog_betas is None:
        folder, archive = "leftImg8bit", ARCHIVES["leftImg8bit"]
    else:
        fog_betas = tuple(normalize_beta(b) for b in fog_betas)
        folder, archive = "leftImg8bit_foggy", ARCHIVES["leftImg8bit_foggy"]
    image_dir = os.path.join(cs_root, folder, split)
    _require_dir(image_dir, f"split {split!r} of {folder}", archive)
    out, unknown_beta, unnamed = [], [], []
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if not os.path.isdir(city_dir):
            continue
        for fname in sorted(os.listdir(city_dir)):
            path = os.path.join(city_dir, fname)
            if fog_betas is None:
                if fname.endswith(_CLEAR_SUFFIX):
                    out.append((f"{city}/{fname[: -len(_CLEAR_SUFFIX)]}", path, None))
                else:
                    unnamed.append(path)
                continue
            m = _FOGGY_RE.match(fname)
            if not m:
                unnamed.append(path)
                continue
            try:
                beta = normalize_beta(m.group("beta"))
            except ValueError:
                unknown_beta.append(path)
                continue
            if beta in fog_betas:
                out.append((f"{city}/{m.group('base')}", path, beta))
    if unknown_beta:
        logger.warning("%s: ignored %d foggy image(s) whose beta is not one of %s, e.g. %s", image_dir,
                       len(unknown_beta), "/".join(FOGGY_BETAS), unknown_beta[0])
    if unnamed:
        logger.warning("%s: ignored %d file(s) not named like Cityscapes images, e.g. %s", image_dir,
                       len(unnamed), unnamed[0])
    if not out:
        expect = (f"{{city}}/*{_CLEAR_SUFFIX}" if fog_betas is None
                  else f"{{city}}/*_leftImg8bit_foggy_beta_{{{','.join(fog_betas)}}}.png")
        raise ValueError(f"empty split: no images in {image_dir} (expected {expect})")
    # sort by scene, then beta, so the order does not depend on the file system
    order = {b: i for i, b in enumerate(FOGGY_BETAS)}
    out.sort(key=lambda t: (t[0], order.get(t[2], -1)))
    return out


def list_gtfine_instance_files(cs_root: str, split: str) -> Dict[str, str]:
    """``{scene: path of *_gtFine_instanceIds.png}`` of a split."""
    _require_root(cs_root)
    gt_dir = os.path.join(cs_root, "gtFine", split)
    _require_dir(gt_dir, f"split {split!r} of gtFine", ARCHIVES["gtFine"])
    out = {}
    for city in sorted(os.listdir(gt_dir)):
        city_dir = os.path.join(gt_dir, city)
        if not os.path.isdir(city_dir):
            continue
        for fname in os.listdir(city_dir):
            if fname.endswith(_GT_SUFFIX):
                out[f"{city}/{fname[: -len(_GT_SUFFIX)]}"] = os.path.join(city_dir, fname)
    return out


def instance_file_to_annotations(path: str) -> Tuple[int, int, List[dict]]:
    """Decode one ``*_gtFine_instanceIds.png``: ``(height, width, [COCO-style annotation dicts])``.

    Annotation dicts: ``category_id`` (1-based index into CITYSCAPES_THING_CLASSES), ``bbox`` XYWH covering
    the visible pixels, ``iscrowd``, ``area`` (visible pixel count). Raises ValueError for ids outside the
    label table or a PNG that is not a single-channel id image.
    """
    from cityscapesscripts.helpers.labels import id2label

    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable instanceIds PNG ({e})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected a single-channel 16-bit instance-id PNG "
                         f"(label_id * 1000 + k), got PIL mode {mode}")
    h, w = arr.shape
    flat = arr.ravel().astype(np.int64)
    present = np.flatnonzero(np.bincount(flat))
    label_ids = np.where(present >= 1000, present // 1000, present)
    unknown = [int(v) for v, lab in zip(present, label_ids) if int(lab) not in id2label or lab < 0]
    if unknown:
        labels = sorted({i // 1000 if i >= 1000 else i for i in unknown})
        raise ValueError(f"{path}: instance ids {unknown[:10]} have labels {labels} that are not in the Cityscapes "
                         f"label table (cityscapesscripts.helpers.labels)")
    thing_index = {lid: i for i, lid in enumerate(CITYSCAPES_THING_LABEL_IDS)}
    idx = np.flatnonzero(flat >= min(CITYSCAPES_THING_LABEL_IDS))  # stuff ids are below every thing id
    vals = flat[idx]
    annos = []
    for inst_id, lab in zip(present.tolist(), label_ids.tolist()):
        if lab not in thing_index:
            continue  # stuff, or caravan / trailer (ignoreInEval), as detectron2
        pix = idx[vals == inst_id]
        ys, xs = pix // w, pix % w
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        annos.append({"category_id": thing_index[lab] + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                      "iscrowd": int(inst_id < 1000), "area": int(len(pix))})
    return h, w, annos


def _convert_one(item):
    scene, path = item
    return scene, path, instance_file_to_annotations(path)


def _build_gtfine_coco(cs_root, split, gt_files, workers):
    from tqdm import tqdm

    items = sorted(gt_files.items())
    if workers is None:
        workers = 1 if len(items) < 64 else min(8, os.cpu_count() or 1)
    if workers > 1:
        pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers)
        it = pool.imap(_convert_one, items, chunksize=8)
    else:
        pool, it = None, map(_convert_one, items)
    images, annotations = [], []
    try:
        for image_id, (scene, path, (h, w, annos)) in enumerate(
                tqdm(it, total=len(items), desc=f"gtFine {split} instance masks", unit="img", mininterval=1.0)):
            city, base = scene.split("/", 1)
            images.append({"id": image_id, "file_name": f"leftImg8bit/{split}/{city}/{base}{_CLEAR_SUFFIX}",
                           "height": h, "width": w, "scene": scene,
                           "gt_file": os.path.relpath(path, cs_root)})
            for a in annos:
                annotations.append(dict(a, id=len(annotations) + 1, image_id=image_id))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CITYSCAPES_THING_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def gtfine_cache_file(cs_root: str, split: str) -> str:
    return os.path.join(cache_dir_for(cs_root), f"gtFine_{split}_instances.json")


def load_gtfine_annotations(cs_root: str, split: str, workers: Optional[int] = None) -> dict:
    """The split's gtFine boxes as a COCO dict (8 classes, images = clear images), through the cache."""
    gt_files = list_gtfine_instance_files(cs_root, split)
    if not gt_files:
        raise ValueError(f"empty split: no *{_GT_SUFFIX} files in {os.path.join(cs_root, 'gtFine', split)}")
    fingerprint = fingerprint_files(gt_files.values(), cs_root)
    return load_or_build(gtfine_cache_file(cs_root, split), _CACHE_KIND, fingerprint,
                         lambda: _build_gtfine_coco(cs_root, split, gt_files, workers))


def load_cityscapes_detection(
    cs_root: str,
    split: str,
    fog_betas: Optional[Sequence[Union[str, float]]] = None,
    classes: Sequence[str] = CITYSCAPES_THING_CLASSES,
    workers: Optional[int] = None,
) -> List[dict]:
    """Detectron2 dataset dicts of (Foggy) Cityscapes ``split``; every image is kept, also empty ones.

    ``fog_betas``: None for the clear images, else a tuple of betas (each of FOGGY_BETAS): one record per
    foggy image, the annotations being those of its gtFine scene. ``classes``: the 8 classes, or a subset
    (e.g. ``("car",)``) whose boxes alone are kept, with ``category_id`` indexing that subset.
    """
    classes = tuple(classes)
    unknown = [c for c in classes if c not in CITYSCAPES_THING_CLASSES]
    if unknown:
        raise ValueError(f"classes {unknown} are not Cityscapes instance classes {list(CITYSCAPES_THING_CLASSES)}")
    what = "Cityscapes" if fog_betas is None else f"Foggy Cityscapes (beta {'/'.join(map(str, fog_betas))})"
    context = f"{what} {split} under {cs_root}"
    images = list_cityscapes_images(cs_root, split, fog_betas)
    gt_files = list_gtfine_instance_files(cs_root, split)
    missing = [(p, s) for s, p, _ in images if s not in gt_files]
    if missing:
        city, base = missing[0][1].split("/", 1)
        raise FileNotFoundError(
            f"{context}: {len(missing)} of {len(images)} images have no gtFine annotation, e.g. {missing[0][0]} "
            f"needs {os.path.join(cs_root, 'gtFine', split, city, base + _GT_SUFFIX)} (from {ARCHIVES['gtFine']})"
        )
    coco = load_gtfine_annotations(cs_root, split, workers)
    class_map = {c: None for c in CITYSCAPES_THING_CLASSES if c not in classes}
    by_scene = {
        r["scene"]: r
        for r in coco_to_records(coco, cs_root, classes, class_map, context, require_same_classes=True,
                                 extra_image_keys=("scene",))
    }
    records = []
    for image_id, (scene, path, _beta) in enumerate(images):
        gt = by_scene[scene]
        records.append({"file_name": path, "image_id": image_id, "height": gt["height"], "width": gt["width"],
                        "annotations": [dict(a) for a in gt["annotations"]]})
    return check_image_files(records, context)
