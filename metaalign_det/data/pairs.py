"""Domain pairs: a labelled *source* set, an unlabelled *target* set and a labelled *test* set (target domain).

A pair is declared by a YAML (or JSON) manifest, or by :func:`register_domain_pair` with the same fields::

    name: kitti_to_cityscapes_car          # registers <name>_source, <name>_target, <name>_test
    classes: [car]                         # the pair's class list: thing_classes of all three
    class_map: {Car: car, Van: null}       # optional: dataset class -> declared class, null = drop its boxes
    source:
      type: voc
      root: ${DETECTRON2_DATASETS}/kitti/VOC2012
      split: trainval
    target: {type: images, root: "${DETECTRON2_DATASETS}/cityscapes/leftImg8bit/train"}
    test: {type: coco, json: cs_car_val.json, image_root: "${DETECTRON2_DATASETS}/cityscapes"}

(In YAML's ``{...}`` flow style a value holding ``{`` or ``}`` such as ``${VAR}`` must be quoted; block style
needs no quotes.) Set types and their keys (``class_map`` is allowed in each labelled set too; it is merged
over the top-level one):

* ``coco``: ``json`` (COCO instances file), ``image_root`` (what its ``file_name`` s are relative to). For
  the target only, a file holding ``images`` but neither ``annotations`` nor ``categories`` is accepted: an
  unlabelled set (image sizes missing from it are read from the image headers);
* ``voc``: ``root`` (holding ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``), ``split`` (default
  ``trainval``), optional ``image_dir`` / ``ann_dir`` / ``image_ext`` (defaults ``JPEGImages``,
  ``Annotations``, ``.jpg``);
* ``registered``: ``name`` of a dataset already in ``DatasetCatalog`` (e.g. a builtin one). For the target
  only, a dataset without ``thing_classes`` metadata is accepted as unlabelled (its annotations, if any, are
  dropped);
* ``images`` (target only): ``root``, a folder searched recursively for images, optional ``extensions``
  (default ``[.jpg, .jpeg, .png]``, case-insensitive). The target set is unlabelled by definition: this
  is all it needs.

Paths may use ``${DETECTRON2_DATASETS}`` (its default ``datasets`` when unset) and other environment
variables; relative paths are relative to the manifest's directory. Class lists must agree: after the class
map, each set's classes must be exactly the declared ones (a COCO file's categories, a registered dataset's
thing_classes) and a VOC XML may hold no class that is neither declared nor mapped; otherwise one error
names both lists. An unlabelled target (``images``, an images-only COCO file, a registered dataset without
thing_classes) has no classes to check; it still gets the pair's ``thing_classes`` as metadata, so the
paired loader's source/target class check passes. Checks that need no file are made when registering; the
rest when a set is loaded (registration reads no annotation file). Unlabelled records have no
``annotations`` key.

Registering is idempotent: the same definition twice is a no-op; a different one under a registered name is
an error. ``tools/train_net.py`` calls :func:`register_pair_manifests` on ``cfg.DATASETS.PAIR_MANIFESTS``
before building any loader.
"""
import copy
import functools
import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog import is_registered
from .datasets.image_files import IMAGE_EXTENSIONS, load_image_folder

__all__ = [
    "ROLES",
    "OPTIONAL_ROLES",
    "describe_set",
    "load_manifest",
    "register_domain_pair",
    "register_pair_manifests",
    "pair_dataset_names",
    "registered_pairs",
    "unregister_domain_pair",
]

ROLES = ("source", "target", "test")
OPTIONAL_ROLES = ("test",)  # a pair without a labelled target test set trains; it cannot be evaluated on the target
_TOP_KEYS = {"name", "classes", "class_map", "source", "target", "test", "description"}
_SET_KEYS = {
    "coco": ({"json", "image_root"}, {"class_map"}),
    "voc": ({"root"}, {"split", "image_dir", "ann_dir", "image_ext", "class_map"}),
    "registered": ({"name"}, {"class_map"}),
    "images": ({"root"}, {"extensions"}),
}
_UNLABELLED_TYPES = {"images"}  # set types allowed for the target only
_PATH_KEYS = {"json", "image_root", "root"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

# pair name -> normalised definition (what makes re-registration a no-op or an error)
_PAIRS = {}


def pair_dataset_names(name: str) -> Dict[str, str]:
    """``{"source": "<name>_source", "target": "<name>_target", "test": "<name>_test"}``."""
    return {role: f"{name}_{role}" for role in ROLES}


def registered_pairs() -> Dict[str, dict]:
    """A copy of every pair registered in this process: name -> normalised definition."""
    return copy.deepcopy(_PAIRS)


def _closest(key, allowed):
    """[the allowed key ``key`` was most likely meant to be] (case, '_' and '-' ignored first), or []."""
    import difflib

    norm = {re.sub(r"[_\-]", "", k.lower()): k for k in allowed}
    squashed = re.sub(r"[_\-]", "", str(key).lower())
    if squashed in norm:
        return [norm[squashed]]
    return difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)


def _resolve_path(value, base_dir, where):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a path string, got {value!r}")
    from .datasets.builtin import datasets_root

    value = value.replace("${DETECTRON2_DATASETS}", os.path.abspath(datasets_root()))
    value = os.path.expanduser(os.path.expandvars(value))
    if "$" in value:
        raise ValueError(f"{where}: {value!r} uses an environment variable that is not set")
    return os.path.normpath(os.path.join(base_dir, value))


def _check_class_map(class_map, classes, where):
    if class_map is None:
        return {}
    if not isinstance(class_map, dict):
        raise ValueError(f"{where}: class_map must be a mapping dataset class -> declared class or null, "
                         f"got {type(class_map).__name__}")
    for k, v in class_map.items():
        if v is not None and v not in classes:
            raise ValueError(f"{where}: class_map sends {k!r} to {v!r}, which is not in classes {list(classes)}")
    return {str(k): v for k, v in class_map.items()}


def _normalise(name, classes, sets, class_map, base_dir, where):
    """Validate everything checkable without reading data; return the definition with absolute paths."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{where}: name must be a non-empty string of letters, digits, '_', '.', '-'; got {name!r}")
    if (not isinstance(classes, (list, tuple)) or not classes
            or not all(isinstance(c, str) and c for c in classes)):
        raise ValueError(f"{where}: classes must be a non-empty list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{where}: classes {list(classes)} has duplicates")
    classes = list(classes)
    top_map = _check_class_map(class_map, classes, where)
    out = {"name": name, "classes": classes, "class_map": top_map}
    for role in ROLES:
        spec = sets.get(role)
        w = f"{where}: {role}"
        if spec is None and role in OPTIONAL_ROLES:
            out[role] = None  # no labelled target test set: nothing to evaluate on the target
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{w}: expected a mapping with 'type' and its keys, got {spec!r}")
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in _SET_KEYS:
            labelled = sorted(set(_SET_KEYS) - _UNLABELLED_TYPES)
            also = f" or {sorted(_UNLABELLED_TYPES)} (unlabelled, target only)" if role == "target" else ""
            raise ValueError(f"{w}: 'type' must be one of {labelled}{also}, got {kind!r}")
        if kind in _UNLABELLED_TYPES and role != "target":
            raise ValueError(f"{w}: an {kind!r} set has no labels; only the target may be unlabelled "
                             f"(give the {role} set as coco, voc or registered)")
        required, optional = _SET_KEYS[kind]
        missing = sorted(required - set(spec))
        unknown = sorted(set(spec) - required - optional)
        if missing or unknown:  # both at once: a misspelt key is usually the missing one
            parts = [f"a {kind} set needs {sorted(required)}; missing {missing}"] if missing else []
            if unknown:
                hints = [f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k)
                         for k in unknown for close in [_closest(k, required | optional)]]
                parts.append(f"unknown keys [{', '.join(hints)}] for a {kind} set (allowed: "
                             f"{sorted(required | optional)})")
            raise ValueError(f"{w}: {'; '.join(parts)}")
        norm = {"type": kind}
        for k, v in spec.items():
            if k in _PATH_KEYS:
                norm[k] = _resolve_path(v, base_dir, f"{w}.{k}")
            elif k == "class_map":
                norm[k] = _check_class_map(v, classes, w)
            elif k == "extensions":
                norm[k] = _check_extensions(v, f"{w}.{k}")
            else:
                if not isinstance(v, str) or not v:
                    raise ValueError(f"{w}.{k}: expected a non-empty string, got {v!r}")
                norm[k] = v
        if kind == "voc":
            norm.setdefault("split", "trainval")
            norm.setdefault("image_dir", "JPEGImages")
            norm.setdefault("ann_dir", "Annotations")
            norm.setdefault("image_ext", ".jpg")
        if kind == "images":
            norm.setdefault("extensions", list(IMAGE_EXTENSIONS))
        if kind == "registered":
            _check_registered_classes(norm["name"], classes, {**top_map, **norm.get("class_map", {})}, w,
                                      allow_unlabelled=(role == "target"))
        out[role] = norm
    return out


def _check_extensions(value, where):
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(e, str) and len(e) > 1 and e.startswith(".") for e in value)):
        raise ValueError(f"{where}: expected a list of file suffixes such as [.jpg, .png], got {value!r}")
    return [e.lower() for e in value]


def _check_registered_classes(dataset, classes, class_map, where, allow_unlabelled=False):
    if not is_registered(dataset):
        raise ValueError(f"{where}: dataset {dataset!r} is not registered (register it first, or use a coco/voc set)")
    theirs = MetadataCatalog.get(dataset).get("thing_classes", None)
    if theirs is None:
        if allow_unlabelled:  # an unlabelled target: nothing to check
            return
        raise ValueError(f"{where}: dataset {dataset!r} has no thing_classes metadata to check against {classes}")
    mapped = {class_map.get(c, c) for c in theirs} - {None}
    unknown = sorted(m for m in mapped if m not in classes)
    if unknown or mapped != set(classes):
        raise ValueError(
            f"{where}: dataset {dataset!r} has classes {list(theirs)} which (after class_map) do not match the "
            f"pair's classes {list(classes)}; give a class_map (dataset class -> pair class, or null to drop)"
        )


def _load_set(spec, classes, class_map, context, role):
    """Dataset dicts of one set of a pair (called lazily by DatasetCatalog), boxes that do not fit their image
    clipped or dropped by :mod:`metaalign_det.data.datasets.box_rules` (one warning per load)."""
    from .datasets.box_rules import apply_box_rule

    return apply_box_rule(_read_set(spec, classes, class_map, context, role), context)


def _read_set(spec, classes, class_map, context, role):
    """The records of one set as its files give them."""
    cmap = {**class_map, **spec.get("class_map", {})}
    if spec["type"] == "images":
        return load_image_folder(spec["root"], spec["extensions"], context=context)
    if spec["type"] == "coco":
        from .datasets.coco_cache import load_coco_records

        return load_coco_records(spec["json"], spec["image_root"], classes, cmap, context=context,
                                 allow_images_only=(role == "target"))
    if spec["type"] == "voc":
        from .datasets.voc import load_voc_records

        return load_voc_records(spec["root"], spec["split"], classes, cmap, image_dir=spec["image_dir"],
                                ann_dir=spec["ann_dir"], image_ext=spec["image_ext"], context=context)
    # registered: re-index the categories of an existing dataset by name
    theirs = MetadataCatalog.get(spec["name"]).get("thing_classes", None)
    if theirs is None:  # an unlabelled target (checked at registration): whatever labels it has are not ours
        return [{k: v for k, v in r.items() if k != "annotations"} for r in DatasetCatalog.get(spec["name"])]
    index = {c: i for i, c in enumerate(classes)}
    remap = {}
    for k, c in enumerate(theirs):
        target = cmap[c] if c in cmap else c
        remap[k] = None if target is None else index[target]
    records = copy.deepcopy(DatasetCatalog.get(spec["name"]))
    for r in records:
        anns = []
        for a in r.get("annotations", []):
            k = remap[a["category_id"]]
            if k is not None:
                anns.append(dict(a, category_id=k))
        r["annotations"] = anns
    return records


def describe_set(spec: Mapping[str, Any]) -> str:
    """One line naming a normalised set spec (its type, files and split); used in protocols and tool output."""
    if spec["type"] == "coco":
        return f"COCO {spec['json']} (images under {spec['image_root']})"
    if spec["type"] == "voc":
        return f"VOC {spec['root']} (split {spec['split']}, {spec['image_dir']}/*{spec['image_ext']})"
    if spec["type"] == "images":
        return f"unlabelled images under {spec['root']} ({', '.join('*' + e for e in spec['extensions'])})"
    return f"registered dataset {spec['name']}"


def register_domain_pair(
    name: str,
    classes: Sequence[str],
    source: Mapping[str, Any],
    target: Mapping[str, Any],
    test: Optional[Mapping[str, Any]] = None,
    class_map: Optional[Mapping[str, Optional[str]]] = None,
    base_dir: Optional[str] = None,
    description: Optional[str] = None,
    _origin: Optional[str] = None,
) -> Dict[str, str]:
    """Register ``<name>_source``, ``<name>_target`` and ``<name>_test`` (see the module docstring).

    ``source`` / ``target`` / ``test`` are set mappings as in a manifest; relative paths are relative to
    ``base_dir`` (default: the working directory). ``test`` None: the pair has no labelled target test set
    (unsupervised adaptation); ``<name>_test`` is not registered. Returns ``{"source": ..., "target": ...,
    "test": ...}``, the dataset names of the registered sets. Re-registering the same definition is a no-op;
    a different one is a ValueError.
    """
    where = _origin or f"domain pair {name!r}"
    base_dir = os.path.abspath(base_dir or os.getcwd())
    definition = _normalise(name, classes, {"source": source, "target": target, "test": test}, class_map,
                            base_dir, where)
    names = {r: n for r, n in pair_dataset_names(name).items() if definition[r] is not None}
    if name in _PAIRS:
        if _PAIRS[name]["definition"] == definition:
            return names
        raise ValueError(f"{where}: a different domain pair {name!r} is already registered "
                         f"(from {_PAIRS[name]['origin']}); give this one another name")
    taken = [n for n in names.values() if is_registered(n)]
    if taken:
        raise ValueError(f"{where}: dataset names {taken} are already registered by something else; rename the pair")
    for role in names:
        spec = definition[role]
        ds = names[role]
        loader = functools.partial(_load_set, spec, tuple(definition["classes"]), definition["class_map"],
                                   f"{where}: {role}", role)
        DatasetCatalog.register(ds, loader)
        MetadataCatalog.get(ds).set(
            thing_classes=list(definition["classes"]), evaluator_type="coco", domain_pair=name, role=role,
            protocol=(f"domain pair {name}: {role} = {describe_set(spec)}"
                      + ("; labels unused in training" if role == "target" else "")
                      + (f"; {description}" if description else "")),
        )
    _PAIRS[name] = {"definition": definition, "origin": where}
    return names


def unregister_domain_pair(name: str) -> None:
    """Remove a pair registered by this module and its three datasets (tests, notebooks); no-op if absent."""
    if _PAIRS.pop(name, None) is None:
        return
    for ds in pair_dataset_names(name).values():
        if is_registered(ds):
            DatasetCatalog.remove(ds)
            MetadataCatalog.remove(ds)


def load_manifest(path: str) -> Dict[str, Any]:
    """Read and validate a pair manifest (YAML or JSON); return its fields with ``base_dir`` set.

    The result can be passed to :func:`register_domain_pair` as keyword arguments.
    """
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"pair manifest {path} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise ValueError(f"pair manifest {path}: not valid {kind} ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"pair manifest {path}: expected a mapping with {sorted(_TOP_KEYS)}")
    unknown = sorted(set(data) - _TOP_KEYS)
    missing = [k for k in ("name", "classes", *ROLES) if k not in data and k not in OPTIONAL_ROLES]
    if unknown or missing:
        parts = [f"missing keys {missing}"] if missing else []
        if unknown:
            hints = [f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k)
                     for k in unknown for close in [_closest(k, _TOP_KEYS)]]
            parts.append(f"unknown keys [{', '.join(hints)}] (allowed: {sorted(_TOP_KEYS)})")
        raise ValueError(f"pair manifest {path}: {'; '.join(parts)}")
    out = {k: data.get(k) for k in ("name", "classes", "source", "target", "test", "class_map", "description")}
    out["base_dir"] = os.path.dirname(os.path.abspath(path))
    return out


def _one_line(error):
    """A parser error in one line: PyYAML's messages span several, with the offending text under a caret."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        context = f"{error.context}: " if getattr(error, "context", None) else ""
        return f"{context}{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def register_pair_manifests(paths: Union[str, Iterable[str], None]) -> List[str]:
    """Register every manifest in ``paths`` (e.g. ``cfg.DATASETS.PAIR_MANIFESTS``); return the dataset names.

    Idempotent, so train_net and eval can both call it. A string is taken as one path.
    """
    if isinstance(paths, str):
        paths = [paths]
    registered = []
    for path in paths or ():
        m = load_manifest(path)
        names = register_domain_pair(**m, _origin=f"pair manifest {path}")
        registered.extend(names.values())
    return registered
