"""The sim -> real pair on disk: ``<root>/sim2real_pair/<variant>/`` -- generation, stamps, loading, preview.

Nothing here reads or downloads data. The pair (the analogue of Sim10k -> Cityscapes, one class: car) is
rendered by :mod:`metaalign_det.data.datasets.sim2real_render` and written in *variants*, each a folder with
its own stamp, generated on first use and reused while its stamp (generator version + every parameter that
determines its files) is unchanged:

* ``sim``: the source, in the sim style: ``train`` (stream ``sim_train``), ``val``, ``test``;
* ``real``: the target, in the real style (every part of ``Sim2RealParams.real`` that is on): ``train``
  (stream ``real_train``: other scenes than the source's), ``val`` (the sim val scenes), ``dev`` (scenes of
  its own, labelled, for choosing hyperparameters) and ``test`` (the reported split: the sim test scenes);
* ``real_<part>`` for each part of :data:`PARTS`: the same target splits with that part alone switched on
  (its strengths those of ``Sim2RealParams.real``), for studying one part at a time against the shared sim
  source.

Registering the names (``builtin.py``) generates nothing; the first ``DatasetCatalog.get`` of one of them
generates that one variant, and ``tools/prepare_datasets.py sim2real`` the sim and real variants (and, asked,
per-part ones). Each image is rendered from its own seed (:func:`scene_seed`): a split's scenes are the same
in every variant that has it, only the style differs. Layout per variant: ``<split>/<i:06d>.png``,
``annotations/<split>.json`` (COCO, category 1 = car, ``iscrowd`` = mostly hidden car), ``stamp.json``.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ...utils.io import atomic_write_json
from .generated import STAMP_FILE, coco_annotation, ensure_generated, progress, read_stamp_digest, write_png
from .sim2real_render import (
    PARTS,
    SIM2REAL_CLASSES,
    SIM2REAL_GENERATOR_VERSION,
    RealStyle,
    SimScene,
    render_sim2real,
)

__all__ = [
    "Sim2RealParams",
    "DEFAULT_SIM2REAL_PARAMS",
    "SIM2REAL_VARIANTS",
    "DOMAIN_SPLITS",
    "variant_name",
    "scene_seed",
    "sim2real_root",
    "sim2real_dir",
    "sim2real_is_current",
    "ensure_sim2real",
    "load_sim2real",
    "preview_grid",
]

# the variants (folders) and the splits each holds, with the scene stream of every split
SIM2REAL_VARIANTS = ("sim", "real") + tuple(f"real_{p}" for p in PARTS)
DOMAIN_SPLITS = {"sim": ("train", "val", "test"), "real": ("train", "val", "dev", "test")}
_SPLIT_STREAMS = {("sim", "train"): "sim_train", ("real", "train"): "real_train", ("real", "dev"): "real_dev"}
# scene streams: the seed of image i of a stream is (seed, stream, i); val and test are shared by every variant
_STREAMS = {"sim_train": 1, "real_train": 2, "val": 3, "real_dev": 4, "test": 5}


@dataclass(frozen=True)
class Sim2RealParams:
    """The whole pair: seed, split sizes, the scene and the real style. Its hash per variant is that variant's
    stamp, which records only the strengths of the parts the variant has on: changing a part's strength
    regenerates the real variant and that part's, never the sim source or another part's variant."""

    seed: int = 4242
    n_train: int = 400  # per domain (sim train and real train are different scenes)
    n_val: int = 100  # the same scenes for sim val and every real val
    n_dev: int = 200  # labelled real *dev* split (real variants only): for choosing hyperparameters
    n_test: int = 400  # the reported real *test* split; the same scenes are also rendered in the sim style
    scene: SimScene = field(default_factory=SimScene)
    real: RealStyle = field(default_factory=RealStyle)

    def __post_init__(self):
        for name in ("seed", "n_train", "n_val", "n_dev", "n_test"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Sim2RealParams.{name}: expected an integer >= 0, got {v!r}")
        for name, cls in (("scene", SimScene), ("real", RealStyle)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"Sim2RealParams.{name}: expected a {cls.__name__}, got {getattr(self, name)!r}")

    def style(self, variant: str) -> RealStyle:
        """The style a variant is rendered in: sim (no part), real (``self.real``) or one part alone."""
        _check_variant(variant)
        if variant == "sim":
            return self.real.only()
        return self.real if variant == "real" else self.real.only(variant[len("real_"):])

    def sizes(self, variant: str) -> dict:
        """Images per split of ``variant``."""
        n = {"train": self.n_train, "val": self.n_val, "dev": self.n_dev, "test": self.n_test}
        return {s: n[s] for s in DOMAIN_SPLITS[_domain(variant)]}

    def stamp(self, variant: str) -> dict:
        """JSON-able description of everything that determines ``variant``'s files (what its stamp records)."""
        return {"generator_version": SIM2REAL_GENERATOR_VERSION, "classes": list(SIM2REAL_CLASSES),
                "variant": variant, "seed": self.seed, "sizes": self.sizes(variant), "scene": asdict(self.scene),
                "style": self.style(variant).stamp()}

    def digest(self, variant: str) -> str:
        text = json.dumps(self.stamp(variant), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


DEFAULT_SIM2REAL_PARAMS = Sim2RealParams()


def _check_variant(variant):
    if variant not in SIM2REAL_VARIANTS:
        raise ValueError(f"sim2real: no variant {variant!r}; expected one of {', '.join(SIM2REAL_VARIANTS)}")


def _domain(variant):
    return "sim" if variant == "sim" else "real"


def variant_name(domain: str, part: Optional[str] = None) -> str:
    """The variant of ``domain`` ("sim" or "real") with ``part`` alone on (real only; None: every part)."""
    if domain not in ("sim", "real"):
        raise ValueError(f"sim2real: no domain {domain!r}; expected sim or real")
    if part is None:
        return domain
    if domain == "sim":
        raise ValueError(f"sim2real: part {part!r} given for the sim domain; parts exist for real only")
    if part not in PARTS:
        raise ValueError(f"sim2real: no part {part!r}; expected one of {', '.join(PARTS)}")
    return f"real_{part}"


def scene_seed(params: Sim2RealParams, variant: str, split: str, index: int) -> Tuple[int, ...]:
    """The numpy seed sequence entropy of image ``index`` of ``split`` in ``variant``."""
    stream = _SPLIT_STREAMS.get((_domain(variant), split), split)
    return (int(params.seed), _STREAMS[stream], int(index))


# ---------------------------------------------------------------------------------------------------------
# files


def sim2real_root(root: str) -> str:
    """The folder of every variant under a datasets root."""
    return os.path.join(root, "sim2real_pair")


def sim2real_dir(root: str, variant: str) -> str:
    """Where one variant lives under a datasets root."""
    _check_variant(variant)
    return os.path.join(sim2real_root(root), variant)


def _generate(out_dir, params, variant):
    """Write every image and COCO JSON of ``variant`` into ``out_dir`` (stamp last)."""
    style = params.style(variant)
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(SIM2REAL_CLASSES)]
    sizes = params.sizes(variant)
    coco = {s: {"images": [], "annotations": [], "categories": categories} for s in sizes}
    jobs = [(split, i) for split, n in sizes.items() for i in range(n)]
    for split, i in progress(jobs, f"sim2real {variant}"):
        r = render_sim2real(scene_seed(params, variant, split, i), params.scene, style)
        rel = f"{split}/{i:06d}.png"
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        write_png(os.path.join(out_dir, rel), r.image)
        c = coco[split]
        c["images"].append({"id": i, "file_name": rel, "height": params.scene.height, "width": params.scene.width})
        for b, crowd in zip(r.boxes.tolist(), r.iscrowd.tolist()):
            c["annotations"].append(coco_annotation(len(c["annotations"]) + 1, i, b, 1, iscrowd=crowd))
    for split, c in coco.items():
        atomic_write_json(os.path.join(out_dir, "annotations", f"{split}.json"), c, indent=None)
    atomic_write_json(os.path.join(out_dir, STAMP_FILE),
                      {"stamp": params.stamp(variant), "digest": params.digest(variant)}, indent=None)


def sim2real_is_current(root: str, variant: str, params: Optional[Sim2RealParams] = None) -> bool:
    """Whether ``variant`` is under ``root`` complete and made with ``params`` (default DEFAULT_SIM2REAL_PARAMS)."""
    params = DEFAULT_SIM2REAL_PARAMS if params is None else params
    return read_stamp_digest(sim2real_dir(root, variant)) == params.digest(variant)


def ensure_sim2real(root: str, variant: str, params: Optional[Sim2RealParams] = None) -> str:
    """Generate ``variant`` under ``<root>/sim2real_pair/`` unless it is there with the same stamp; return its
    folder. ``params`` defaults to the module's ``DEFAULT_SIM2REAL_PARAMS`` (looked up at call time). Atomic
    and safe for concurrent processes (:func:`.generated.ensure_generated`)."""
    params = DEFAULT_SIM2REAL_PARAMS if params is None else params
    out = sim2real_dir(root, variant)
    # _generate looked up at call time (tests replace it)
    return ensure_generated(out, params.digest(variant), lambda tmp: _generate(tmp, params, variant),
                            f"sim2real pair ({variant})")


def load_sim2real(root: str, domain: str, split: str, part: Optional[str] = None,
                  params: Optional[Sim2RealParams] = None) -> List[dict]:
    """Dataset dicts of one split: ``sim2real_{domain}_{split}``, or with ``part``
    ``sim2real_{part}_real_{split}`` (generating that variant first if needed)."""
    from .coco_cache import load_coco_records

    variant = variant_name(domain, part)
    if split not in DOMAIN_SPLITS[domain]:
        raise ValueError(f"sim2real pair: no split {domain}/{split}; expected one of "
                         f"{', '.join(f'{domain}/{s}' for s in DOMAIN_SPLITS[domain])}")
    out = ensure_sim2real(root, variant, params)
    return load_coco_records(os.path.join(out, "annotations", f"{split}.json"), out, classes=SIM2REAL_CLASSES)


# ---------------------------------------------------------------------------------------------------------
# the picture


def preview_grid(params: Optional[Sim2RealParams] = None, n_images: int = 2, split: str = "test",
                 label_width: int = 64) -> np.ndarray:
    """The same ``n_images`` scenes of ``split`` in every style, a row each: sim, real, then each part alone.

    Rendered from ``params`` (nothing is read or written). Returns an RGB uint8 array of shape
    ``(rows * height, label_width + n_images * width, 3)`` with each row's name on its left.
    """
    params = DEFAULT_SIM2REAL_PARAMS if params is None else params
    rows = [("sim", "sim"), ("real", "real (all)")] + [(f"real_{p}", p) for p in PARTS]
    h, w = params.scene.height, params.scene.width
    out = np.full((len(rows) * h, label_width + n_images * w, 3), 255, np.uint8)
    for r, (variant, title) in enumerate(rows):
        style = params.style(variant)
        for i in range(n_images):
            img = render_sim2real(scene_seed(params, variant, split, i), params.scene, style).image
            out[r * h:(r + 1) * h, label_width + i * w:label_width + (i + 1) * w] = img
        label = out[r * h:(r + 1) * h, :label_width]  # a view: the name never spills into the images
        for k, line in enumerate(title.split(" ")):
            cv2.putText(label, line, (4, h // 2 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return out
