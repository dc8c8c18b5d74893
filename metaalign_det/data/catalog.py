"""The one "is this dataset registered?" check of the package (detectron2's ``DatasetCatalog``), with the closest
registered names for a misspelt one."""
import difflib
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog

__all__ = ["is_registered", "unregistered_dataset"]


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered dataset."""
    return name in DatasetCatalog.list()


def unregistered_dataset(names: Sequence[str]) -> Optional[Tuple[str, List[str]]]:
    """The first of ``names`` that is not in ``DatasetCatalog``, with the closest registered names (by spelling;
    else those with the same first word), or None."""
    registered = DatasetCatalog.list()
    for n in names:
        if n not in registered:
            close = difflib.get_close_matches(str(n), registered, n=3, cutoff=0.6) or \
                sorted(r for r in registered if r.split("_")[0] == str(n).split("_")[0])[:8]
            return str(n), close
    return None
