"""Command-line plumbing shared by ``tools/eval.py`` and ``tools/visualize.py``: config loading, dataset
registration (``--coco-json``, the config's pair manifests), and bad input turned into one clear line."""
import difflib
import os
import re
import sys
from typing import Iterable, List, Sequence

from detectron2.data import DatasetCatalog


__all__ = [
    "ToolError",
    "fail",
    "load_config",
    "split_config_overrides",
    "register_coco_json",
    "register_config_datasets",
    "check_datasets",
]

_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # MODEL.WEIGHTS, TEST.AP_METRIC, ...


class ToolError(Exception):
    """Bad user input; the tools print it as one line and exit with status 2."""


def fail(tool: str, error: Exception, code: int = 2):
    """Print ``<tool>: error: <message>`` on stderr and exit with ``code``."""
    print(f"{tool}: error: {error}", file=sys.stderr, flush=True)
    sys.exit(code)


def load_config(config_file: str, opts: Sequence[str] = ()):
    """The training tools' config (:func:`metaalign_det.engine.setup.setup_cfg`, not frozen), with every
    failure turned into one ToolError line."""
    from ..engine.setup import setup_cfg

    try:
        return setup_cfg(config_file, list(opts), freeze=False)
    except FileNotFoundError as e:
        raise ToolError(str(e)) from e
    except Exception as e:  # yacs / YAML / manifest errors name the key; keep them on one line
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ToolError(f"cannot merge {config_file} {' '.join(opts)}: {type(e).__name__}: {msg}".strip()) from e


def split_config_overrides(values: Sequence[str], opts: Sequence[str]):
    """A list option (``nargs="+"``) swallows the trailing ``KEY VALUE`` overrides; give them back.

    Everything from the first config-key-looking token (upper-case dotted, e.g. ``MODEL.DEVICE``) on is
    moved to the front of ``opts``. Returns (values, opts).
    """
    values = list(values or [])
    for i, v in enumerate(values):
        if _CONFIG_KEY.match(v):
            return values[:i], values[i:] + list(opts)
    return values, list(opts)


def register_coco_json(specs: Iterable[str]) -> List[str]:
    """Register ``NAME=JSON:IMAGE_ROOT`` datasets with detectron2's ``register_coco_instances``."""
    from detectron2.data.datasets import register_coco_instances

    names = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        json_file, sep2, image_root = rest.partition(":")
        if not (sep and sep2 and name and json_file):
            raise ToolError(f"--coco-json {spec!r}: expected NAME=JSON:IMAGE_ROOT")
        if not os.path.isfile(json_file):
            raise ToolError(f"--coco-json {spec!r}: JSON file {json_file} not found")
        if name in DatasetCatalog.list():
            raise ToolError(f"--coco-json {spec!r}: dataset name '{name}' is already registered")
        register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names


def register_config_datasets(cfg) -> None:
    """Register the builtin dataset names (importing ``metaalign_det.data`` reads no file) and the config's
    DATASETS.PAIR_MANIFESTS."""
    import metaalign_det.data as data

    manifests = list(cfg.DATASETS.get("PAIR_MANIFESTS", ()))
    if not manifests:
        return
    register = getattr(data, "register_pair_manifests", None)
    if register is None:
        raise ToolError("DATASETS.PAIR_MANIFESTS is set but metaalign_det.data.register_pair_manifests is missing")
    register(manifests)


def check_datasets(names: Sequence[str]) -> None:
    """Every name must be registered; else one line with the closest registered names."""
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ToolError(
                f"unknown dataset '{name}' (not registered{hint}); register it with --coco-json "
                f"NAME=JSON:IMAGE_ROOT or DATASETS.PAIR_MANIFESTS"
            )
