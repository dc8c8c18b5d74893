"""Checks of the image files that dataset dicts point to, and images-only (unlabelled) image sets.

At load time (:func:`check_image_files`, once per ``DatasetCatalog.get``) every image's *header* is read and
the last KiB of every JPEG and PNG is looked at: a JPEG ends with its end-of-image marker ``FF D9`` and a PNG
with its ``IEND`` chunk, so a file cut short (an interrupted copy or download) lacks them. Only such suspect
files are then fully decoded; those that fail are skipped like files that are not images at all (zero bytes,
HTML error pages saved as .png), with one warning giving the count and the first file. Cost: one small read
per image, no decode (a JPEG with data appended after its end marker, e.g. a phone's motion photo, is decoded
once per load and kept). What this cannot see (a file damaged in the middle, same length) is found by a full
decode: ``tools/prepare_datasets.py --verify-images`` (:func:`verify_image`) before training, and
:class:`metaalign_det.data.mapper.SafeImageMapper` during it.

An images-only set (:func:`load_image_folder`) is a folder of images without labels: the target set of a
domain pair needs nothing else. Its records have ``file_name``, ``image_id``, ``height``, ``width`` and no
``annotations`` key (detectron2's "no instances").
"""
import contextlib
import logging
import os
from typing import Iterator, List, Optional, Sequence, Tuple

from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_image_files",
    "collect_unreadable_images",
    "load_image_folder",
    "oriented_size",
    "verify_image",
]

logger = logging.getLogger(__name__)

# what an images-only folder is searched for (lower-cased suffixes; the match ignores case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# PIL's exceptions for "not an image / cannot decode": UnidentifiedImageError and "image file is truncated"
# are OSErrors, a broken PNG chunk is a SyntaxError; DecompressionBombError is a plain Exception.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

_TAIL_BYTES = 1024
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}

# lists that collect_unreadable_images() handed out; check_image_files appends every skipped image to each
_collectors = []


@contextlib.contextmanager
def collect_unreadable_images() -> Iterator[List[Tuple[str, str]]]:
    """Yield a list that receives ``(path, reason)`` for every image :func:`check_image_files` skips in the block.

    For tools that report what loading skipped (``tools/prepare_datasets.py --verify-images``); the loaders
    themselves only log it.
    """
    found = []
    _collectors.append(found)
    try:
        yield found
    finally:
        _collectors.remove(found)


_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # transpose, rotate 270, transverse, rotate 90: width and height trade places


def oriented_size(im: "Image.Image") -> Tuple[int, int]:
    """``(width, height)`` of an opened (not necessarily decoded) image as detectron2 reads it for training:
    ``detection_utils.read_image`` applies the EXIF orientation tag, and orientations 5-8 swap the sides.

    Reads only the header: a JPEG's EXIF is in its header; a PNG's is looked at only when PIL found it there
    (asking for it otherwise decodes the whole file).
    """
    w, h = im.size
    if im.format == "PNG" and "exif" not in im.info:
        return w, h
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION)
    except DECODE_ERRORS:  # a broken EXIF block: detectron2 ignores it too
        return w, h
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def verify_image(path: str) -> Optional[str]:
    """Decode ``path`` in full (strictly: damage anywhere in the file is an error), then read it exactly as
    training does (detectron2's ``read_image``: EXIF orientation applied, converted to BGR); return None if
    both work, else a one-line reason (no exception).

    Picklable (a module-level function) so that a process pool can run it.
    """
    from detectron2.data.detection_utils import read_image

    try:
        with Image.open(path) as im:
            im.load()
        read_image(path, format="BGR")
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


def _read_header(path):
    """``(width, height, None)`` of a readable image, or ``(None, None, reason)``.

    A JPEG / PNG whose last KiB lacks its end marker is decoded in full: kept if that works (data after the
    marker), reported with the decoder's error if not (cut short).
    """
    try:
        with open(path, "rb") as f:
            with Image.open(f) as im:
                w, h = oriented_size(im)
                fmt = im.format
            marker = _END_MARKERS.get(fmt)
            if marker is None:
                return w, h, None
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            if marker in f.read():
                return w, h, None
    except DECODE_ERRORS as e:  # UnidentifiedImageError is an OSError
        return None, None, f"{type(e).__name__}: {e}"
    reason = verify_image(path)
    if reason is not None:
        return None, None, f"cut short (no {fmt} end marker; decoding fails with {reason})"
    return w, h, None


def check_image_files(records: List[dict], context: str) -> List[dict]:
    """Return ``records`` minus unreadable images; raise on absent images or sizes that disagree.

    * an image listed but absent -> ``FileNotFoundError`` (the listing and the tree disagree: fix the tree);
    * an unreadable image (corrupt header, or a JPEG / PNG cut short) -> skipped, with one warning giving the
      count and the first file;
    * an image whose size differs from the record's height/width -> ``ValueError`` (boxes would be wrong);
      a record whose height/width are None or absent gets them from the header (images-only sets). Sizes
      are as training reads the image: EXIF orientation applied (:func:`oriented_size`);
    * nothing left -> ``ValueError`` (empty split).
    """
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{context}: {len(missing)} of {len(records)} listed images are absent, e.g. {missing[0]}"
        )
    kept, bad = [], []
    for r in records:
        w, h, reason = _read_header(r["file_name"])
        if reason is not None:
            bad.append((r["file_name"], reason))
            continue
        if r.get("height") is None or r.get("width") is None:
            r = dict(r, height=h, width=w)
        elif (h, w) != (r["height"], r["width"]):
            raise ValueError(
                f"{context}: image {r['file_name']} is {w}x{h} (width x height, as training reads it: EXIF "
                f"orientation applied) but its annotation says {r['width']}x{r['height']}"
            )
        kept.append(r)
    if bad:
        logger.warning("%s: skipping %d unreadable image(s) of %d, first: %s (%s)", context, len(bad),
                       len(records), bad[0][0], bad[0][1])
        for found in _collectors:
            found.extend(bad)
    if not kept:
        raise ValueError(f"{context}: no readable images left (empty split)")
    return kept


def load_image_folder(
    root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, context: Optional[str] = None
) -> List[dict]:
    """Checked records of every image under ``root`` (recursive, sorted by path; hidden entries skipped).

    ``extensions``: file suffixes to take (case-insensitive). ``image_id`` is the index in that sorted
    order. No ``annotations`` key: the set is unlabelled.
    """
    context = context or f"image folder {root}"
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{context}: image folder {root} does not exist")
    exts = tuple(e.lower() for e in extensions)
    paths = []
    for d, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
        paths.extend(os.path.join(d, f) for f in files if not f.startswith(".") and f.lower().endswith(exts))
    if not paths:
        raise ValueError(f"{context}: no images ({', '.join('*' + e for e in exts)}) under {root} (empty split)")
    records = [{"file_name": p, "image_id": i, "height": None, "width": None} for i, p in enumerate(sorted(paths))]
    return check_image_files(records, context)
