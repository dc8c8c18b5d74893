"""Converted annotations cached as COCO JSON, valid only for the exact source files they came from.

A cache file is an ordinary COCO instances JSON (``images`` / ``annotations`` / ``categories``, 1-based
category ids, XYWH boxes; pycocotools reads it) plus one extra top-level key, ``metaalign``, recording the
cache format version, what kind of conversion made it and a fingerprint of the source annotation files
(relative path, size, mtime in ns). :func:`load_or_build` serves the cache only when that fingerprint equals
the one of the tree on disk now; anything else (files changed, added, removed, other version) rebuilds it
with one log line. Callers list the source tree *before* asking for the cache, so a missing tree is an
error, never silently served from a cache.

Also here: dataset dicts <-> COCO conversion with class-list checks, used by every loader of the project.
"""
import hashlib
import json
import logging
import os
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

from ...utils.io import atomic_write_json

__all__ = [
    "CACHE_FORMAT_VERSION",
    "fingerprint_files",
    "cache_dir_for",
    "load_or_build",
    "records_to_coco",
    "coco_to_records",
    "load_coco_records",
]

logger = logging.getLogger(__name__)

# Bump when the content of any cache changes meaning (box convention, fields): old caches get rebuilt.
CACHE_FORMAT_VERSION = 1


def fingerprint_files(paths: Iterable[str], base: str) -> List[list]:
    """``[[relative path, size, mtime_ns], ...]`` of ``paths`` (sorted), relative to ``base``: cheap stat only."""
    out = []
    for p in sorted(paths):
        st = os.stat(p)
        out.append([os.path.relpath(p, base), st.st_size, st.st_mtime_ns])
    return out


def cache_dir_for(dataset_dir: str) -> str:
    """``<dataset_dir>/metaalign_cache`` when writable, else ``~/.cache/metaalign_det/<hash of the path>``.

    ``METAALIGN_CACHE_DIR``, when set, replaces the fallback location (useful for read-only dataset mounts).
    """
    preferred = os.path.join(dataset_dir, "metaalign_cache")
    probe = preferred if os.path.isdir(preferred) else dataset_dir
    if os.access(probe, os.W_OK):
        return preferred
    key = hashlib.sha256(os.path.abspath(dataset_dir).encode()).hexdigest()[:12]
    base = os.environ.get("METAALIGN_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "metaalign_det"))
    return os.path.join(base, f"{os.path.basename(os.path.normpath(dataset_dir))}-{key}")


def _describe_difference(old, new):
    old = {r[0]: tuple(r[1:]) for r in old}
    new = {r[0]: tuple(r[1:]) for r in new}
    changed = sum(1 for k in new if k in old and old[k] != new[k])
    added = sum(1 for k in new if k not in old)
    removed = sum(1 for k in old if k not in new)
    return f"{changed} source files changed, {added} added, {removed} removed"


def load_or_build(cache_file: str, kind: str, fingerprint: List[list], build: Callable[[], dict]) -> dict:
    """Return the COCO dict in ``cache_file`` if it was made by ``kind`` from exactly ``fingerprint``.

    Otherwise call ``build()`` (which returns a COCO dict), stamp it, write it atomically and return it.
    A stale cache is rebuilt with one INFO line saying why.
    """
    stamp = {"version": CACHE_FORMAT_VERSION, "kind": kind, "fingerprint": fingerprint}
    reason = None
    if os.path.exists(cache_file):
        try:
            with open(cache_file) as f:
                coco = json.load(f)
            have = coco.get("metaalign", {})
        except (OSError, ValueError) as e:
            have, reason = {}, f"unreadable ({type(e).__name__})"
        if have == stamp:
            return coco
        if reason is None:
            if have.get("version") != CACHE_FORMAT_VERSION or have.get("kind") != kind:
                reason = f"made by {have.get('kind')!r} v{have.get('version')}, need {kind!r} v{CACHE_FORMAT_VERSION}"
            else:
                reason = _describe_difference(have.get("fingerprint", []), fingerprint)
        logger.info("annotation cache %s is stale (%s): rebuilding", cache_file, reason)
    else:
        logger.info("converting annotations once into %s", cache_file)
    coco = build()
    coco["metaalign"] = stamp
    try:
        atomic_write_json(cache_file, coco, indent=None)  # mode 0644: a shared dataset folder stays readable
    except OSError as e:  # a read-only tree must not stop training: serve the fresh conversion uncached
        logger.warning("could not write annotation cache %s (%s); continuing without it", cache_file, e)
    return coco


def records_to_coco(records: Sequence[dict], classes: Sequence[str], extra_image_keys: Sequence[str] = ()) -> dict:
    """Dataset dicts (XYXY_ABS boxes, 0-based contiguous ``category_id``) -> COCO dict.

    ``file_name`` is written as given (callers pass paths relative to their image root).
    """
    images, annotations = [], []
    for r in records:
        img = {"id": r["image_id"], "file_name": r["file_name"], "height": r["height"], "width": r["width"]}
        for k in extra_image_keys:
            if k in r:
                img[k] = r[k]
        images.append(img)
        for a in r["annotations"]:
            x0, y0, x1, y1 = (float(v) for v in a["bbox"])
            ann = {"id": len(annotations) + 1, "image_id": r["image_id"], "category_id": a["category_id"] + 1,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(a.get("iscrowd", 0)),
                   "area": float(a.get("area", (x1 - x0) * (y1 - y0)))}
            if "difficult" in a:
                ann["difficult"] = int(a["difficult"])
            annotations.append(ann)
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _map_categories(coco, classes, class_map, context, require_same_classes):
    """COCO category id -> index into ``classes`` (or None = drop), with the class-list checks."""
    class_map = dict(class_map or {})
    index = {c: i for i, c in enumerate(classes)}
    cat_names = [c["name"] for c in coco.get("categories", [])]
    mapping, mapped = {}, set()
    for cat in coco.get("categories", []):
        name = cat["name"]
        target = class_map[name] if name in class_map else name
        if target is None:
            mapping[cat["id"]] = None
            continue
        if target not in index:
            where = ""
            ann = next((a for a in coco.get("annotations", []) if a["category_id"] == cat["id"]), None)
            if ann is not None:
                img = next((i for i in coco["images"] if i["id"] == ann["image_id"]), {})
                where = f" (first in {img.get('ann_file') or img.get('file_name')})"
            raise ValueError(
                f"{context}: class {name!r}{where} is not in the declared classes {list(classes)} and "
                f"class_map has no entry for it; map it to a declared class, or to null to drop it"
            )
        mapping[cat["id"]] = index[target]
        mapped.add(target)
    if require_same_classes and mapped != set(classes):
        raise ValueError(
            f"{context}: its classes {cat_names} (after class_map: {sorted(mapped)}) do not match the "
            f"declared classes {list(classes)}; give a class_map (dataset class -> declared class, or null to drop)"
        )
    return mapping


def coco_to_records(
    coco: dict,
    image_root: str,
    classes: Sequence[str],
    class_map: Optional[Mapping[str, Optional[str]]] = None,
    context: str = "dataset",
    require_same_classes: bool = True,
    extra_image_keys: Sequence[str] = (),
) -> List[dict]:
    """COCO dict -> detectron2 dataset dicts with ``category_id`` indexing ``classes``.

    Every image is kept, also those without (kept) annotations. ``class_map`` maps dataset class names to
    declared class names or to ``None`` (drop those boxes). A class neither declared nor mapped is an
    error; with ``require_same_classes`` the mapped category list must also equal ``classes`` exactly.
    ``extra_image_keys``: image-entry keys copied into the records as they are.
    """
    from detectron2.structures import BoxMode

    mapping = _map_categories(coco, classes, class_map, context, require_same_classes)
    per_image = {}
    for a in coco.get("annotations", []):
        if a["category_id"] not in mapping:
            raise ValueError(f"{context}: annotation {a.get('id')} has category_id {a['category_id']}, "
                             f"which is not in its categories list")
        k = mapping[a["category_id"]]
        if k is None:
            continue
        x, y, w, h = a["bbox"]
        ann = {"bbox": [x, y, x + w, y + h], "bbox_mode": BoxMode.XYXY_ABS, "category_id": k,
               "iscrowd": int(a.get("iscrowd", 0))}
        if "difficult" in a:
            ann["difficult"] = int(a["difficult"])
        per_image.setdefault(a["image_id"], []).append(ann)
    records = []
    for img in coco.get("images", []):
        r = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": img["id"],
            "height": img["height"],
            "width": img["width"],
            "annotations": per_image.get(img["id"], []),
        }
        for k in extra_image_keys:
            if k in img:
                r[k] = img[k]
        records.append(r)
    return records


def load_coco_records(
    json_file: str,
    image_root: str,
    classes: Sequence[str],
    class_map: Optional[Mapping[str, Optional[str]]] = None,
    context: Optional[str] = None,
    check_images: bool = True,
    require_same_classes: bool = True,
    allow_images_only: bool = False,
) -> List[dict]:
    """Read a COCO JSON file and return checked dataset dicts (see :func:`coco_to_records`).

    ``allow_images_only``: a file with ``images`` but neither ``annotations`` nor ``categories`` is an
    unlabelled set (a domain pair's target): its records have no ``annotations`` key, no class check is
    made, and a missing ``height`` / ``width`` is read from the image header.
    """
    from .image_files import check_image_files

    context = context or json_file
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{context}: annotation file {json_file} does not exist")
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except ValueError as e:
        raise ValueError(f"{context}: {json_file} is not valid JSON ({e})") from None
    if not isinstance(coco, dict):
        raise ValueError(f"{context}: {json_file} holds a {type(coco).__name__}, expected a COCO instances JSON "
                         f"object with 'images'")
    images_only = "images" in coco and "annotations" not in coco and "categories" not in coco
    if images_only and allow_images_only:
        bad = next((k for k, img in enumerate(coco["images"])
                    if not isinstance(img, dict) or not isinstance(img.get("file_name"), str)), None)
        if bad is not None:
            raise ValueError(f"{context}: {json_file}: images[{bad}] has no 'file_name' string")
        records = [{"file_name": os.path.join(image_root, img["file_name"]), "image_id": img.get("id", k),
                    "height": img.get("height"), "width": img.get("width")} for k, img in enumerate(coco["images"])]
    else:
        for key in ("images", "categories"):
            if key not in coco:
                hint = ("; a file with only 'images' is accepted for a domain pair's target set only"
                        if images_only else "")
                raise ValueError(f"{context}: {json_file} has no {key!r} list (expected a COCO instances JSON){hint}")
        records = coco_to_records(coco, image_root, classes, class_map, context, require_same_classes)
    if not records:
        raise ValueError(f"{context}: {json_file} lists no images (empty split)")
    if check_images:
        records = check_image_files(records, context)
    return records
