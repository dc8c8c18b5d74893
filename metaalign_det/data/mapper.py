"""A dataset mapper that turns an undecodable image into a named, counted event instead of an opaque crash.

Loading checks each image's header and end marker (``datasets/image_files.py``), so a file cut short is
skipped before training starts -- for the datasets of this project. A dataset registered with detectron2's
own functions gets no such check, and a file can be damaged after loading; detectron2's ``DatasetMapper``
then fails when it decodes the file, possibly at iteration 40,000, with PIL's ``image file is truncated (4
bytes not processed)``, which does not say which file. :class:`SafeImageMapper` wraps any mapper and, when
reading an image fails:

* ``on_unreadable="skip"`` (training): logs one warning naming the file and the count of distinct
  unreadable files so far (per data-loading process), and returns in its place another image of
  ``fallback`` (the same set's records: a batch keeps its size and its domain), drawn at random as
  detectron2's ``MapDataset`` does. Without ``fallback`` it returns None, detectron2's own "skip this one";
  but ``MapDataset`` (detectron2 0.6, and its main branch as of this writing) then draws with
  ``random.sample`` on a set, which Python >= 3.11 refuses with a TypeError, hence the fallback. More than
  ``max_skipped`` distinct bad files stop training with :class:`UnreadableImageError` (the data is
  damaged: ``tools/prepare_datasets.py --verify-images`` lists every bad file).
* ``on_unreadable="error"`` (evaluation, where a replaced image would change AP): raises
  :class:`UnreadableImageError` naming the file.

Caught: ``OSError`` (absent file, truncated or corrupt data), ``SyntaxError`` (PIL's broken PNG chunk),
``PIL.Image.DecompressionBombError``. Not caught: ``ValueError`` such as detectron2's image-size mismatch,
which is a wrong annotation, not a bad file. (detectron2's ``read_image`` ignores an error raised while it
reads EXIF data and may then return a PNG damaged in the middle half-decoded, without error; only the full
decode of ``--verify-images`` finds those.)
"""
import logging
import random
from typing import Any, Callable, Optional, Sequence

from detectron2.data.common import DatasetFromList
from PIL import Image

__all__ = ["SafeImageMapper", "UnreadableImageError"]

logger = logging.getLogger(__name__)

_POLICIES = ("skip", "error")
_DECODE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)
_MAX_DRAWS = 1000  # replacement draws before giving up (only reached when nearly every image is bad)


class UnreadableImageError(ValueError):
    """An image could not be decoded; the message names the file (one line)."""


class SafeImageMapper:
    """``mapper(dataset_dict)`` with decode errors caught, named and counted (see the module docstring).

    Args:
        mapper: the wrapped callable, e.g. ``DatasetMapper(cfg, is_train=True)``.
        on_unreadable: ``"skip"`` (replace the image, see the module docstring) or ``"error"``.
        max_skipped: with ``"skip"``, the number of distinct unreadable files tolerated per process; one
            more raises :class:`UnreadableImageError`.
        fallback: the records replacements are drawn from (a list of dataset dicts, kept serialized as
            detectron2's ``DatasetFromList`` does, so that data-loading workers do not copy it); None: return
            None for an unreadable image.

    Attributes:
        skipped (dict): file name -> reason of every file skipped in this process.
    """

    def __init__(self, mapper: Callable[[dict], Any], on_unreadable: str = "skip", max_skipped: int = 100,
                 fallback: Optional[Sequence[dict]] = None) -> None:
        if on_unreadable not in _POLICIES:
            raise ValueError(f"on_unreadable must be one of {_POLICIES}, got {on_unreadable!r}")
        if int(max_skipped) < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped!r}")
        self.mapper = mapper
        self.on_unreadable = on_unreadable
        self.max_skipped = int(max_skipped)
        self.skipped = {}
        if fallback is not None and not isinstance(fallback, DatasetFromList):
            fallback = DatasetFromList(list(fallback), copy=True, serialize=True)
        self._fallback = fallback
        self._rng = random.Random(0)

    def __call__(self, dataset_dict: dict) -> Any:
        file_name = dataset_dict.get("file_name", "<no file_name>")
        if file_name in self.skipped:  # a known bad file sampled again: no second decode, no second warning
            return self._replacement()
        try:
            return self.mapper(dataset_dict)
        except _DECODE_ERRORS as e:
            self._unreadable(file_name, e)
        return self._replacement()

    def _unreadable(self, file_name, error):
        reason = f"{type(error).__name__}: {error}".replace("\n", " ")
        if self.on_unreadable == "error":
            raise UnreadableImageError(f"cannot decode image {file_name} ({reason})")
        self.skipped[file_name] = reason
        n = len(self.skipped)
        if n > self.max_skipped:
            first = next(iter(self.skipped))
            raise UnreadableImageError(
                f"{n} images could not be decoded (more than max_skipped={self.max_skipped}), first {first}, "
                f"last {file_name} ({reason}); the data is damaged: run tools/prepare_datasets.py --verify-images"
            )
        logger.warning("skipping unreadable image %s (%s); %d unreadable image(s) skipped so far in this "
                       "data-loading process", file_name, reason, n)

    def _replacement(self):
        """A random readable record of ``fallback``, mapped; None without a fallback."""
        if self._fallback is None:
            return None
        for _ in range(_MAX_DRAWS):
            d = self._fallback[self._rng.randrange(len(self._fallback))]
            file_name = d.get("file_name", "<no file_name>")
            if file_name in self.skipped:
                continue
            try:
                out = self.mapper(d)
            except _DECODE_ERRORS as e:
                self._unreadable(file_name, e)
                continue
            if out is not None:
                return out
        raise UnreadableImageError(
            f"no readable image in {_MAX_DRAWS} random draws from {len(self._fallback)} images "
            f"({len(self.skipped)} unreadable, first {next(iter(self.skipped), None)}): run "
            f"tools/prepare_datasets.py --verify-images"
        )

    def __repr__(self):
        return (f"SafeImageMapper({self.mapper!r}, on_unreadable={self.on_unreadable!r}, "
                f"max_skipped={self.max_skipped})")
