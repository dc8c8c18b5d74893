"""Support for the command-line tools (``tools/*.py``, benchmarks): building a config the way every tool does,
registering the datasets it names (once, here), and bad input turned into one clear line with exit status 2.

This module sits at the top of the package's layers (it may import every subpackage); nothing in
``metaalign_det`` imports it.
"""
import ast
import os
import re
import sys
from typing import Iterable, List, Sequence

import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from .config import add_metaalign_config

__all__ = [
    "setup_cfg",
    "register_config_datasets",
    "ToolError",
    "fail",
    "load_config",
    "split_config_overrides",
    "register_coco_json",
    "check_datasets",
    "load_dataset_dicts",
]

_FLOAT_INT_MISMATCH = re.compile(
    r"Type mismatch \(<class 'float'> vs\. <class 'int'>\) with values \((.*) vs\. (.*)\) for config key: (\S+)"
)
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # MODEL.WEIGHTS, TEST.AP_METRIC, ...


def setup_cfg(config_file, opts=(), freeze=True):
    """detectron2 defaults + this project's keys + ``config_file`` (with ``_BASE_``) + ``KEY VALUE`` overrides;
    then registers the domain-pair manifests it names (DATASETS.PAIR_MANIFESTS).

    A float key given an integer on the command line (``META.INNER_LR_SCALE 10``) takes it as a float.

    Errors: a missing config file, an unknown key or a value of the wrong type -> FileNotFoundError /
    KeyError / ValueError with one line naming it.
    """
    cfg = get_cfg()
    add_metaalign_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file}: no such file")
        _check_config_file(config_file)
        try:
            cfg.merge_from_file(config_file)
        except ValueError as e:
            m = _FLOAT_INT_MISMATCH.search(str(e))
            if m:
                raise ValueError(f"{config_file}: {m.group(3)} is a float key: write {m.group(2)}.0, not "
                                 f"{m.group(2)}") from None
            raise ValueError(f"{config_file}: {e}") from None
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd list: {list(opts)}")
        try:
            cfg.merge_from_list(_ints_for_float_keys(cfg, opts))
        except (KeyError, AssertionError) as e:
            raise KeyError(f"config override {list(opts)}: {e}") from None
        except ValueError as e:
            raise ValueError(f"config override {list(opts)}: {e}") from None
    register_config_datasets(cfg)
    apply_pair(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def apply_pair(cfg) -> None:
    """DATASETS.PAIR = a manifest path or a registered pair's name: set DATASETS.TRAIN / TRAIN_TARGET / TEST
    to the pair's source, target and test set (no TEST when the pair has no labelled test set). Explicit
    TRAIN / TRAIN_TARGET that differ are an error (one of the two ways, not both); an explicit TEST is kept
    (e.g. several evaluation sets)."""
    from .data import load_manifest, pair_dataset_names, registered_pairs

    name = cfg.DATASETS.get("PAIR", "")
    if not name:
        return
    if _is_manifest_path(name):  # registered by register_config_datasets
        name = load_manifest(name)["name"]
    pairs = registered_pairs()
    if name not in pairs:
        known = ", ".join(sorted(pairs)) or "none"
        raise ValueError(f"DATASETS.PAIR: no domain pair {name!r} is registered (registered: {known}); name its "
                         f"manifest in DATASETS.PAIR_MANIFESTS")
    names = pair_dataset_names(name)
    for key, role in (("TRAIN", "source"), ("TRAIN_TARGET", "target")):
        given = tuple(cfg.DATASETS[key])
        if given and given != (names[role],):
            raise ValueError(f"DATASETS.PAIR {name!r} sets DATASETS.{key} to ({names[role]!r},) but the config "
                             f"also sets it to {given}: give one of the two")
        cfg.DATASETS[key] = (names[role],)
    if not tuple(cfg.DATASETS.TEST):
        cfg.DATASETS.TEST = (names["test"],) if pairs[name]["definition"]["test"] is not None else ()


def _check_config_file(path: str, _seen: Sequence[str] = ()) -> None:
    """One line for a config file that is not YAML (naming the line), not a mapping of keys, or whose
    ``_BASE_`` chain names a missing file (naming the file whose ``_BASE_`` it is). Relative ``_BASE_`` paths
    are resolved as detectron2 does: against the folder of the file that names them."""
    top = _yaml_mapping(path)
    base = (top or {}).get("_BASE_")
    if base is None:
        return
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: _BASE_ must be a path string, got {base!r}")
    resolved = os.path.expanduser(base)
    if not resolved.startswith(("/", "https://", "http://")):
        resolved = os.path.join(os.path.dirname(path), resolved)
    if "://" in resolved:
        return  # a remote base: detectron2's PathManager fetches it
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"{path}: its _BASE_ {base!r} ({os.path.abspath(resolved)}) does not exist")
    if os.path.abspath(resolved) in _seen:
        raise ValueError(f"{path}: _BASE_ {base!r} makes a cycle ({' -> '.join(list(_seen) + [resolved])})")
    _check_config_file(resolved, tuple(_seen) + (os.path.abspath(path),))


def _yaml_mapping(path: str):
    """The parsed top level of a YAML config file (None when empty); one ValueError line when it is not YAML
    or not a mapping of keys. Files with Python tags (which detectron2's loader accepts) give None."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            top = yaml.safe_load(f)
    except yaml.constructor.ConstructorError:
        return None  # python tags (detectron2 configs may use them): merge_from_file's unsafe loader reads them
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e.reason})") from None
    if top is not None and not isinstance(top, dict):
        raise ValueError(f"{path}: expected a mapping of config keys (e.g. MODEL: ...), got a YAML "
                         f"{type(top).__name__}")
    return top


def _ints_for_float_keys(cfg, opts):
    """``opts`` with every integer value of a float-typed key written as a float (yacs refuses int -> float)."""
    out = list(opts)
    for i in range(0, len(out), 2):
        node = cfg
        try:
            for part in str(out[i]).split("."):
                node = node[part]
        except (KeyError, TypeError):
            continue  # unknown key: merge_from_list names it
        if not isinstance(node, float):
            continue
        value = out[i + 1]
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue  # not a number: yacs reports the mismatch
        if isinstance(value, int) and not isinstance(value, bool):
            out[i + 1] = repr(float(value)) if isinstance(out[i + 1], str) else float(value)
    return out


def register_config_datasets(cfg) -> List[str]:
    """Register the config's DATASETS.PAIR_MANIFESTS (the builtin names are registered by importing
    ``metaalign_det.data``, which reads no file); returns the registered names.

    The one place that does it: :func:`setup_cfg` calls it, and so does a process that receives an already
    built config (a ``launch`` worker). Registering the same manifests again is a no-op
    (:func:`metaalign_det.data.register_pair_manifests` is idempotent).
    """
    from .data import register_pair_manifests

    manifests = list(cfg.DATASETS.get("PAIR_MANIFESTS", ()))
    if _is_manifest_path(cfg.DATASETS.get("PAIR", "")):
        manifests.append(cfg.DATASETS.PAIR)
    return register_pair_manifests(manifests) if manifests else []


def _is_manifest_path(value: str) -> bool:
    return bool(value) and (str(value).endswith((".yaml", ".yml", ".json")) or os.sep in str(value))


class ToolError(Exception):
    """Bad user input; the tools print it as one line and exit with status 2."""


def fail(tool: str, error: Exception, code: int = 2):
    """Print ``<tool>: error: <message>`` on stderr, as one line, and exit with ``code``."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def load_config(config_file: str, opts: Sequence[str] = ()):
    """The training tools' config (:func:`setup_cfg`, not frozen; manifests registered), with every failure
    turned into one ToolError line."""
    try:
        return setup_cfg(config_file, list(opts), freeze=False)
    except FileNotFoundError as e:
        raise ToolError(str(e)) from e
    # what yacs (KeyError: unknown key; ValueError: type; AssertionError: its checks), YAML, the manifests
    # (ValueError / KeyError) and reading a file (OSError) raise; anything else is a bug and surfaces
    except (ValueError, KeyError, AssertionError, OSError, yaml.YAMLError) as e:
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


def _load_coco_json_checked(name: str, json_file: str, image_root: str):
    """detectron2's ``load_coco_json`` with a bad file turned into one ValueError naming it, and the box rule
    of :mod:`metaalign_det.data.datasets.box_rules` applied (clip / drop, one warning)."""
    from detectron2.data.datasets import load_coco_json

    from .data.datasets.box_rules import apply_box_rule

    try:
        records = load_coco_json(json_file, image_root, name)
    except FileNotFoundError:
        raise
    # truncated / non-COCO JSON: json (ValueError), pycocotools (AssertionError: not a dict; KeyError: no
    # "images"), detectron2 (KeyError / TypeError / IndexError on malformed entries), reading (OSError)
    except (ValueError, KeyError, TypeError, IndexError, AssertionError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{json_file} is not a readable COCO instances JSON ({type(e).__name__}: {first})") \
            from None
    return apply_box_rule(records, f"dataset '{name}' ({json_file})")


def register_coco_json(specs: Iterable[str]) -> List[str]:
    """Register ``NAME=JSON:IMAGE_ROOT`` datasets the way detectron2's ``register_coco_instances`` does (its
    loader and metadata), with a bad JSON file reported as one line naming it."""
    from .data.catalog import unregistered_dataset

    names = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        json_file, sep2, image_root = rest.partition(":")
        if not (sep and sep2 and name and json_file):
            raise ToolError(f"--coco-json {spec!r}: expected NAME=JSON:IMAGE_ROOT")
        if not os.path.isfile(json_file):
            raise ToolError(f"--coco-json {spec!r}: JSON file {json_file} not found")
        if unregistered_dataset([name]) is None:
            raise ToolError(f"--coco-json {spec!r}: dataset name '{name}' is already registered")
        DatasetCatalog.register(name, lambda n=name, j=json_file, r=image_root: _load_coco_json_checked(n, j, r))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
        names.append(name)
    return names


def check_datasets(names: Sequence[str]) -> None:
    """Every name must be registered; else one line with the closest registered names."""
    from .data.catalog import unregistered_dataset

    missing = unregistered_dataset(names)
    if missing:
        name, close = missing
        hint = f"; did you mean {' or '.join(close[:3])}?" if close else ""
        raise ToolError(f"unknown dataset '{name}' (not registered{hint}); register it with --coco-json "
                        f"NAME=JSON:IMAGE_ROOT or DATASETS.PAIR_MANIFESTS")


def load_dataset_dicts(name: str) -> List[dict]:
    """``DatasetCatalog.get(name)`` for a tool: a registered name whose files cannot be read, or that lists no
    image, is one ToolError line naming the dataset (and the loader's reason)."""
    check_datasets([name])
    try:
        dicts = DatasetCatalog.get(name)
    # what dataset loaders raise on bad files (see _load_coco_json_checked, the manifests): first line kept
    except (OSError, ValueError, KeyError, TypeError, IndexError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ToolError(f"dataset '{name}': {first}") from e
    if not dicts:
        raise ToolError(f"dataset '{name}' has no images (empty split)")
    return dicts
