"""Checks of the image files that dataset dicts point to, done once when a dataset is loaded.

Only image *headers* are read (PIL opens lazily): cheap enough for 10k images, and it catches files that
are not images at all (zero bytes, HTML error pages saved as .png, wrong extension). A truncated image
whose header is intact is only found when it is decoded during training.
"""
import logging
import os

from PIL import Image

__all__ = ["check_image_files"]

logger = logging.getLogger(__name__)


def check_image_files(records, context):
    """Return ``records`` minus unreadable images; raise on absent images or sizes that disagree.

    * an image listed but absent -> ``FileNotFoundError`` (the listing and the tree disagree: fix the tree);
    * an unreadable (corrupt) image -> skipped, with one warning giving the count and the first file;
    * an image whose size differs from the record's height/width -> ``ValueError`` (boxes would be wrong);
    * nothing left -> ``ValueError`` (empty split).
    """
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{context}: {len(missing)} of {len(records)} listed images are absent, e.g. {missing[0]}"
        )
    kept, bad = [], []
    for r in records:
        try:
            with Image.open(r["file_name"]) as im:
                w, h = im.size
        except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
            bad.append((r["file_name"], e))
            continue
        if (h, w) != (r["height"], r["width"]):
            raise ValueError(
                f"{context}: image {r['file_name']} is {w}x{h} but its annotation says "
                f"{r['width']}x{r['height']}"
            )
        kept.append(r)
    if bad:
        logger.warning("%s: skipping %d unreadable image(s) of %d, first: %s (%s)", context, len(bad),
                       len(records), bad[0][0], bad[0][1])
    if not kept:
        raise ValueError(f"{context}: no readable images left (empty split)")
    return kept
