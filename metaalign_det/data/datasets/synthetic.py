"""The embedded demo pair on disk: ``<root>/synthetic_pair/`` -- generation, stamp, loading.

Nothing here reads or downloads data: the pair is generated once under ``<root>/synthetic_pair/`` (numpy +
OpenCV, a few seconds on one core) and reused while its stamp (generator version + every parameter below)
is unchanged. Registering the four datasets (``builtin.py``) does not generate; the first
``DatasetCatalog.get`` of one of them, or ``tools/prepare_datasets.py synthetic``, does.

The scenes and the clear -> target model are those of :mod:`metaalign_det.data.datasets.synthetic_render`
(scene model, fog / colour cast / blur / noise). Each scene of a split is rendered from its own seed
(:func:`scene_seed`); the val and test scenes are rendered once and written clear and shifted.

The depth map used (centimetres, uint16, ``SKY_DEPTH`` saturated) is written next to every image, so the
target images can be reproduced exactly from the clear ones (tests do).
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

from ...utils.io import atomic_write_json
from .generated import STAMP_FILE, coco_annotation, ensure_generated, progress, read_stamp_digest, write_png
from .synthetic_render import (
    GENERATOR_VERSION,
    SYNTHETIC_CLASSES,
    SceneParams,
    TargetShift,
    apply_target_shift,
    render_scene,
)

__all__ = [
    "SyntheticPairParams",
    "DEFAULT_PARAMS",
    "scene_seed",
    "shift_seed",
    "synthetic_pair_dir",
    "synthetic_pair_is_current",
    "ensure_synthetic_pair",
    "load_synthetic",
]


@dataclass(frozen=True)
class SyntheticPairParams:
    """The whole pair: sizes, seeds, scene and shift parameters. Its hash is the on-disk stamp."""

    seed: int = 2024
    n_train: int = 400  # per domain (source train and target train are different scenes)
    n_val: int = 100  # the same scenes for clear val and foggy val
    n_dev: int = 200  # labelled target *dev* split (foggy only): for choosing hyperparameters
    n_test: int = 400  # the reported target *test* split; the same scenes are also rendered clear
    scene: SceneParams = field(default_factory=SceneParams)
    shift: TargetShift = field(default_factory=TargetShift)

    def stamp(self) -> dict:
        """JSON-able description of everything that determines the files (what the stamp records)."""
        return {"generator_version": GENERATOR_VERSION, "classes": list(SYNTHETIC_CLASSES), **asdict(self)}

    def digest(self) -> str:
        text = json.dumps(self.stamp(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


DEFAULT_PARAMS = SyntheticPairParams()

# scene streams: the seed of scene i of a stream is (seed, stream, i); val scenes are shared by both domains
_STREAMS = {"source_train": 1, "target_train": 2, "val": 3, "target_dev": 4, "test": 5}
# streams rendered in both domains (the foggy image is the clear one with the target shift applied)
_SHARED_STREAMS = ("val", "test")
_SHIFT_STREAM = 7  # extra seed word for the target shift's random draws (airlight jitter, noise)


def scene_seed(params: SyntheticPairParams, stream: str, index: int) -> Tuple[int, ...]:
    """The numpy seed sequence entropy of scene ``index`` of ``stream`` ("source_train", "target_train", "val")."""
    return (int(params.seed), _STREAMS[stream], int(index))


def shift_seed(params: SyntheticPairParams, stream: str, index: int) -> Tuple[int, ...]:
    """Entropy of the target-shift draws for scene ``index`` of ``stream``."""
    return scene_seed(params, stream, index) + (_SHIFT_STREAM,)


# ---------------------------------------------------------------------------------------------------------
# files


def synthetic_pair_dir(root: str) -> str:
    """Where the pair lives under a datasets root."""
    return os.path.join(root, "synthetic_pair")


# (domain, split) -> (scene stream, shifted?)
_SPLITS = {
    ("clear", "train"): ("source_train", False),
    ("clear", "val"): ("val", False),
    ("foggy", "train"): ("target_train", True),
    ("foggy", "val"): ("val", True),
    ("foggy", "dev"): ("target_dev", True),
    ("clear", "test"): ("test", False),
    ("foggy", "test"): ("test", True),
}


def _generate(out_dir, params):
    """Write every image, depth map and COCO JSON of the pair into ``out_dir`` (stamp last)."""
    n = {"train": params.n_train, "val": params.n_val, "dev": params.n_dev, "test": params.n_test}
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(SYNTHETIC_CLASSES)]
    coco = {k: {"images": [], "annotations": [], "categories": categories} for k in _SPLITS}
    rendered = {}
    jobs = [(dom, split, i) for (dom, split) in _SPLITS for i in range(n[split])]
    for dom, split, i in progress(jobs, "synthetic pair"):
        stream, shifted = _SPLITS[(dom, split)]
        key = (stream, i)
        if key not in rendered or not shifted:
            scene = render_scene(scene_seed(params, stream, i), params.scene)
            if stream in _SHARED_STREAMS:
                rendered[key] = scene  # the foggy split reuses the clear split's scene
            depth_rel = f"depth/{stream}/{i:06d}.png"
            if not os.path.exists(os.path.join(out_dir, depth_rel)):
                os.makedirs(os.path.dirname(os.path.join(out_dir, depth_rel)), exist_ok=True)
                write_png(os.path.join(out_dir, depth_rel), scene.depth_cm)
        else:
            scene = rendered.pop(key)
        image = scene.image
        if shifted:
            image = apply_target_shift(image, scene.depth_cm, params.shift, shift_seed(params, stream, i))
        rel = f"{dom}/{split}/{i:06d}.png"
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
        write_png(os.path.join(out_dir, rel), image)
        c = coco[(dom, split)]
        c["images"].append({"id": i, "file_name": rel, "height": params.scene.height,
                            "width": params.scene.width, "depth_file": f"depth/{stream}/{i:06d}.png"})
        for b, k in zip(scene.boxes.tolist(), scene.classes.tolist()):
            c["annotations"].append(coco_annotation(len(c["annotations"]) + 1, i, b, k + 1))
    for (dom, split), c in coco.items():
        atomic_write_json(os.path.join(out_dir, "annotations", f"{dom}_{split}.json"), c, indent=None)
    atomic_write_json(os.path.join(out_dir, STAMP_FILE), {"stamp": params.stamp(), "digest": params.digest()},
                      indent=None)


def synthetic_pair_is_current(root: str, params: Optional[SyntheticPairParams] = None) -> bool:
    """Whether ``<root>/synthetic_pair`` holds a complete pair made with ``params`` (default DEFAULT_PARAMS)."""
    params = DEFAULT_PARAMS if params is None else params
    return read_stamp_digest(synthetic_pair_dir(root)) == params.digest()


def ensure_synthetic_pair(root: str, params: Optional[SyntheticPairParams] = None) -> str:
    """Generate the pair under ``<root>/synthetic_pair`` unless it is there with the same stamp; return its dir.

    ``params`` defaults to the module's ``DEFAULT_PARAMS`` (looked up at call time).

    Generation goes to a temporary sibling directory which is then swapped in, so a crash never leaves a
    half-written pair behind a valid stamp, and concurrent processes (DDP ranks) cannot corrupt it.
    """
    params = DEFAULT_PARAMS if params is None else params
    # _generate looked up at call time (tests replace it)
    return ensure_generated(synthetic_pair_dir(root), params.digest(), lambda tmp: _generate(tmp, params),
                            "synthetic pair")


def load_synthetic(root: str, domain: str, split: str, params: Optional[SyntheticPairParams] = None) -> List[dict]:
    """Dataset dicts of ``synthetic_{domain}_{split}`` (generating the pair first if needed)."""
    from .coco_cache import load_coco_records

    if (domain, split) not in _SPLITS:
        raise ValueError(f"synthetic pair: no split {domain}/{split}; expected one of "
                         f"{sorted(f'{d}/{s}' for d, s in _SPLITS)}")
    out = ensure_synthetic_pair(root, params)
    return load_coco_records(os.path.join(out, "annotations", f"{domain}_{split}.json"), out,
                             classes=SYNTHETIC_CLASSES)
