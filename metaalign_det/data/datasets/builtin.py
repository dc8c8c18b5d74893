"""Builtin datasets at fixed paths under the datasets root, registered when this module is imported.

The root is ``$DETECTRON2_DATASETS`` (default ``datasets/``, relative to the working directory), as for
detectron2's own builtin datasets. Registering reads no file: each name is bound to a loader (paths bound
as lambda default arguments) that lists the tree, converts annotations through the COCO-JSON cache and
checks images only when ``DatasetCatalog.get(name)`` is called. Expected trees: ``datasets/README.md``.

Names (metadata: ``thing_classes``, ``evaluator_type``, ``protocol``, ``domain``, ``fog_beta``, ``split``):

* ``cityscapes_det_{train,val}``: Cityscapes (clear), 8 classes: source / oracle;
* ``foggy_cityscapes_det_{train,val}_beta{0.02,0.01,0.005}``: Foggy Cityscapes, one beta
  (0.02 alone is the DA-Faster / SWDA / MIC protocol);
* ``foggy_cityscapes_det_{train,val}_allbeta``: Foggy Cityscapes, all three betas (the AT / ALDI protocol);
* ``cityscapes_car_{train,val}``: Cityscapes, car only (target / test of Sim10k -> Cityscapes);
* ``sim10k_car_trainval``: Sim10k, car only (source);
* ``synthetic_{clear,foggy}_{train,val}``: the embedded demo pair (generated on first load);
  ``synthetic_foggy_dev`` (200 labelled target images for choosing hyperparameters) and
  ``synthetic_{clear,foggy}_test`` (400 scenes, the split adaptation results are reported on);
* ``sim2real_sim_{train,val,test}`` and ``sim2real_real_{train,val,dev,test}``: the generated sim -> real
  pair, car only (the analogue of Sim10k -> Cityscapes; test = the same scenes in both styles), and
  ``sim2real_<part>_real_{train,val,dev,test}`` for each part of the real style alone (texture, shapes, camera,
  layout, sensor; the sim source is shared); each variant generated on first load.
"""
import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..catalog import is_registered
from .cityscapes_foggy import CITYSCAPES_THING_CLASSES, FOGGY_BETAS, load_cityscapes_detection
from .sim2real import DOMAIN_SPLITS, load_sim2real, sim2real_dir, variant_name
from .sim2real_render import PARTS, SIM2REAL_CLASSES
from .sim10k import load_sim10k_car
from .synthetic import load_synthetic
from .synthetic_render import SYNTHETIC_CLASSES

__all__ = [
    "datasets_root",
    "register_all_builtin",
    "register_all_cityscapes",
    "register_all_sim10k",
    "register_all_synthetic",
    "register_all_sim2real",
    "CITYSCAPES_SPLITS",
    "SIM10K_SPLITS",
    "SYNTHETIC_SPLITS",
    "SIM2REAL_SPLITS",
]

_EVALUATOR_TYPE = "coco"  # box AP50 in pycocotools' convention (the project evaluator's default, coco101)

# name -> (split, fog betas (None = clear images), classes)
CITYSCAPES_SPLITS = {
    "cityscapes_det_train": ("train", None, CITYSCAPES_THING_CLASSES),
    "cityscapes_det_val": ("val", None, CITYSCAPES_THING_CLASSES),
    "cityscapes_car_train": ("train", None, ("car",)),
    "cityscapes_car_val": ("val", None, ("car",)),
}
for _split in ("train", "val"):
    for _beta in FOGGY_BETAS:
        CITYSCAPES_SPLITS[f"foggy_cityscapes_det_{_split}_beta{_beta}"] = (_split, (_beta,), CITYSCAPES_THING_CLASSES)
    CITYSCAPES_SPLITS[f"foggy_cityscapes_det_{_split}_allbeta"] = (_split, FOGGY_BETAS, CITYSCAPES_THING_CLASSES)

# name -> (VOC image-set list name, classes)
SIM10K_SPLITS = {"sim10k_car_trainval": ("trainval", ("car",))}

# name -> (domain, split)
SYNTHETIC_SPLITS = {
    f"synthetic_{domain}_{split}": (domain, split) for domain in ("clear", "foggy") for split in ("train", "val")
}
# labelled target dev split (for choosing hyperparameters) and the reported test split (clear: same scenes)
SYNTHETIC_SPLITS.update({"synthetic_foggy_dev": ("foggy", "dev"), "synthetic_clear_test": ("clear", "test"),
                         "synthetic_foggy_test": ("foggy", "test")})

# name -> (domain, part alone (None: the whole real style; always None for sim), split)
SIM2REAL_SPLITS = {f"sim2real_{domain}_{split}": (domain, None, split)
                   for domain in ("sim", "real") for split in DOMAIN_SPLITS[domain]}
SIM2REAL_SPLITS.update({f"sim2real_{part}_real_{split}": ("real", part, split)
                        for part in PARTS for split in DOMAIN_SPLITS["real"]})


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` or ``datasets`` (user-expanded), read when called."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _register(name, loader, metadata, overwrite):
    if is_registered(name):
        if not overwrite:
            raise ValueError(f"dataset {name!r} is already registered (pass overwrite=True to re-bind it)")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def _cityscapes_protocol(split, betas, classes):
    what = "car only" if tuple(classes) == ("car",) else f"{len(classes)} classes"
    boxes = "boxes = visible extent of gtFine instance masks, crowd regions iscrowd=1 (ignored)"
    if betas is None:
        return f"Cityscapes {split} (clear leftImg8bit), {what}; {boxes}"
    if len(betas) == 1:
        note = " (the DA-Faster/SWDA/MIC protocol)" if betas[0] == "0.02" else ""
        return f"Foggy Cityscapes {split}, beta={betas[0]} only{note}, {what}; {boxes}"
    return (f"Foggy Cityscapes {split}, all three betas {'/'.join(betas)} (the AT/ALDI protocol: 3 images per "
            f"scene), {what}; {boxes}")


def register_all_cityscapes(root: str, overwrite: bool = False) -> None:
    cs_root = os.path.join(root, "cityscapes")
    for name, (split, betas, classes) in CITYSCAPES_SPLITS.items():
        _register(
            name,
            lambda cs_root=cs_root, split=split, betas=betas, classes=classes: load_cityscapes_detection(
                cs_root, split, fog_betas=betas, classes=classes),
            dict(thing_classes=list(classes), evaluator_type=_EVALUATOR_TYPE,
                 protocol=_cityscapes_protocol(split, betas, classes),
                 domain="cityscapes" if betas is None else "foggy_cityscapes",
                 fog_beta=None if betas is None else ("all" if len(betas) > 1 else betas[0]),
                 split=split, dataset_root=cs_root),
            overwrite,
        )


def register_all_sim10k(root: str, overwrite: bool = False) -> None:
    voc_root = os.path.join(root, "sim10k", "VOC2012")
    for name, (split, classes) in SIM10K_SPLITS.items():
        _register(
            name,
            lambda voc_root=voc_root, split=split: load_sim10k_car(voc_root, split),
            dict(thing_classes=list(classes), evaluator_type=_EVALUATOR_TYPE,
                 protocol=f"Sim10k {split} (VOC XML), car only; other classes dropped; difficult flag kept",
                 domain="sim10k", split=split, dataset_root=voc_root),
            overwrite,
        )


def register_all_synthetic(root: str, overwrite: bool = False) -> None:
    for name, (domain, split) in SYNTHETIC_SPLITS.items():
        _register(
            name,
            lambda root=root, domain=domain, split=split: load_synthetic(root, domain, split),
            dict(thing_classes=list(SYNTHETIC_CLASSES), evaluator_type=_EVALUATOR_TYPE,
                 protocol=(f"embedded demo pair, {domain} {split} (generated, seeded; "
                           f"{'source domain' if domain == 'clear' else 'target domain: fog + cast + blur + noise'})"),
                 domain=f"synthetic_{domain}", split=split,
                 dataset_root=os.path.join(root, "synthetic_pair")),
            overwrite,
        )


def _sim2real_protocol(domain, part, split):
    if domain == "sim":
        style = "source domain: sim style (flat colours, hard edges, no noise, one camera)"
    elif part is None:
        style = f"target domain: real style, every part ({', '.join(PARTS)})"
    else:
        style = f"target domain: the real style's {part} part alone (study of one part)"
    return f"generated sim -> real pair, {domain} {split}, car only (seeded; {style})"


def register_all_sim2real(root: str, overwrite: bool = False) -> None:
    for name, (domain, part, split) in SIM2REAL_SPLITS.items():
        variant = variant_name(domain, part)
        _register(
            name,
            lambda root=root, domain=domain, split=split, part=part: load_sim2real(root, domain, split, part),
            dict(thing_classes=list(SIM2REAL_CLASSES), evaluator_type=_EVALUATOR_TYPE,
                 protocol=_sim2real_protocol(domain, part, split),
                 domain=f"sim2real_{domain}" if part is None else f"sim2real_{part}_real",
                 parts=[] if domain == "sim" else ([part] if part else list(PARTS)),
                 split=split, dataset_root=sim2real_dir(root, variant)),
            overwrite,
        )


def register_all_builtin(root: Optional[str] = None, overwrite: bool = False) -> None:
    """Register every builtin name under ``root`` (default :func:`datasets_root`); reads no file.

    ``overwrite=True`` re-binds names already registered (tests and tools use it to point the builtin names
    at another root).
    """
    root = datasets_root() if root is None else os.path.expanduser(root)
    register_all_cityscapes(root, overwrite)
    register_all_sim10k(root, overwrite)
    register_all_synthetic(root, overwrite)
    register_all_sim2real(root, overwrite)


if __name__.endswith(".builtin"):
    # Registered at import, like detectron2's builtin datasets (a __main__ run would double-register).
    register_all_builtin()
