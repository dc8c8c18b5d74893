"""Weak and strong views of a training image, for teacher-student training (docs/teacher.md).

* **Weak view** = what detectron2's ``DatasetMapper`` produces: ``ResizeShortestEdge`` (INPUT.MIN_SIZE_TRAIN /
  MAX_SIZE_TRAIN) + ``RandomFlip`` (INPUT.RANDOM_FLIP). It is the only place where geometry changes, and the
  mapper moves the boxes with the image. :class:`TargetViewMapper` is that mapper for the unlabelled target
  set, additionally recording the geometric transform it applied (``"transforms"``), so that monitoring can
  bring target labels into the same frame without ever feeding them to the model.
* **Strong view** = :class:`StrongAugmentation` applied to the *weak view's* tensor: colour jitter, random
  grayscale, Gaussian blur, random erasing (cutout). All of it is photometric (erasing replaces pixels, it
  moves nothing), so the strong view has the weak view's geometry: boxes predicted on the weak view (the
  teacher's pseudo-labels) are valid on the strong view as they are.

Where: the strong view is built in the data loader (in its worker processes when DATALOADER.NUM_WORKERS > 0),
by :class:`StrongViewMapper` around the domain's mapper, and travels in the batch as ``"image_strong"`` next
to the weak ``"image"``; the training step only picks it up (engine/teacher.py).

Seeding: every random draw of the strong view comes from a ``torch.Generator`` seeded by :func:`view_seed`
(seed base, iteration, the image's index in the global batch, source/target stream). The loader knows each
record's *stream position* ``k`` -- its place in the domain's global sampler stream (data/paired_loader.py) --
and the iteration and batch index are ``divmod(k, global batch size)``: exactly the image's step and place in
the global batch (index = local index x world size + rank) whenever batches are formed in stream order
(DATALOADER.NUM_WORKERS 0, and aspect-ratio grouping off or all images of one orientation). Otherwise -- worker
processes interleaving their shares of the stream, mixed orientations grouped into batches -- the seed still
belongs to the image's place in the stream, whichever batch the image lands in. Either way it is independent
of the global RNG and of how the global batch is split over processes, so a resumed run and a run on several
processes draw the same strong views of the same images as an uninterrupted single-process run. The seed
base is the paired loader's source seed (``cfg.SEED`` when it is >= 0, else a shared random draw that
checkpoints keep).
"""
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms.functional as TF
from detectron2.data import DatasetMapper

__all__ = [
    "STREAM_POSITION",
    "STRONG_IMAGE",
    "StrongAugmentation",
    "StrongViewMapper",
    "TargetViewMapper",
    "add_strong_views",
    "build_target_view_mapper",
    "strong_view_mapper",
    "view_seed",
]

_SEED_MOD = 2**63 - 1
# stream ids of view_seed
SOURCE_STREAM, TARGET_STREAM = 0, 1
# keys of a record / mapped dict: the record's place in its domain's global sampler stream (set by the paired
# loader), and the strong view of the mapped image (set by StrongViewMapper)
STREAM_POSITION = "stream_position"
STRONG_IMAGE = "image_strong"


def view_seed(seed_base: int, iteration: int, index: int, stream: int) -> int:
    """Seed of one image's strong view: a function of the run seed, the iteration, the image's index in the
    step's *global* batch (``local index * world size + rank``) and the stream (0 source, 1 target)."""
    return (((int(seed_base) * 1_000_003 + int(iteration)) * 8_191 + int(index)) * 2 + int(stream)) % _SEED_MOD


def _pair(x, name) -> Tuple[float, float]:
    lo, hi = (float(v) for v in x)
    if not lo <= hi:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {tuple(x)}")
    return lo, hi


def _prob(x, name) -> float:
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {x}")
    return x


class StrongAugmentation:
    """The strong photometric pipeline (Adaptive Teacher / ALDI style), on one image tensor.

    Steps, each with its own probability: colour jitter (brightness, contrast, saturation, hue factors drawn
    uniformly, applied in a random order), grayscale (3 channels kept), Gaussian blur (sigma uniform in
    ``blur_sigma`` pixels, kernel ``2 ceil(3 sigma) + 1``), then one random-erasing pass per entry of
    ``erase_probs`` (area fraction uniform in ``erase_scale``, aspect ratio h/w log-uniform in ``erase_ratio``,
    filled with uniform noise; up to 10 tries to fit the image, as torchvision's RandomErasing).

    Args:
        image_format: channel order of the tensors ("BGR" as detectron2's default INPUT.FORMAT, or "RGB");
            colour operations (saturation, hue, grayscale weights) are done in RGB.
        other args: see the INPUT.STRONG_AUG keys in metaalign_det/config.py.
    """

    def __init__(self, color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                 grayscale_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 2.0), erase_probs=(0.7, 0.5, 0.3),
                 erase_scale=(0.02, 0.2), erase_ratio=(0.3, 3.3), image_format="BGR"):
        self.color_jitter_prob = _prob(color_jitter_prob, "INPUT.STRONG_AUG.COLOR_JITTER_PROB")
        for name, v in (("BRIGHTNESS", brightness), ("CONTRAST", contrast), ("SATURATION", saturation)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"INPUT.STRONG_AUG.{name} must be in [0, 1], got {v}")
        if not 0.0 <= float(hue) <= 0.5:
            raise ValueError(f"INPUT.STRONG_AUG.HUE must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.saturation, self.hue = float(saturation), float(hue)
        self.grayscale_prob = _prob(grayscale_prob, "INPUT.STRONG_AUG.GRAYSCALE_PROB")
        self.blur_prob = _prob(blur_prob, "INPUT.STRONG_AUG.BLUR_PROB")
        self.blur_sigma = _pair(blur_sigma, "INPUT.STRONG_AUG.BLUR_SIGMA")
        if self.blur_sigma[0] <= 0:
            raise ValueError(f"INPUT.STRONG_AUG.BLUR_SIGMA must be > 0, got {tuple(blur_sigma)}")
        self.erase_probs = [_prob(p, "INPUT.STRONG_AUG.ERASE_PROBS") for p in erase_probs]
        self.erase_scale = _pair(erase_scale, "INPUT.STRONG_AUG.ERASE_SCALE")
        self.erase_ratio = _pair(erase_ratio, "INPUT.STRONG_AUG.ERASE_RATIO")
        if not (0 < self.erase_scale[0] and self.erase_scale[1] <= 1 and self.erase_ratio[0] > 0):
            raise ValueError("INPUT.STRONG_AUG.ERASE_SCALE must lie in (0, 1] and ERASE_RATIO be > 0, got "
                             f"{tuple(erase_scale)} and {tuple(erase_ratio)}")
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"StrongAugmentation supports INPUT.FORMAT 'BGR' or 'RGB', got {image_format!r}")
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg) -> "StrongAugmentation":
        s = cfg.INPUT.STRONG_AUG
        return cls(s.COLOR_JITTER_PROB, s.BRIGHTNESS, s.CONTRAST, s.SATURATION, s.HUE, s.GRAYSCALE_PROB,
                   s.BLUR_PROB, s.BLUR_SIGMA, s.ERASE_PROBS, s.ERASE_SCALE, s.ERASE_RATIO, cfg.INPUT.FORMAT)

    # -- random draws (all from the generator) --------------------------------------------------------
    @staticmethod
    def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        factors = [self._u(g, max(0.0, 1 - v), 1 + v) for v in (self.brightness, self.contrast, self.saturation)]
        hue = self._u(g, -self.hue, self.hue)
        for op in torch.randperm(4, generator=g).tolist():
            if op == 0 and self.brightness > 0:
                x = TF.adjust_brightness(x, factors[0])
            elif op == 1 and self.contrast > 0:
                x = TF.adjust_contrast(x, factors[1])
            elif op == 2 and self.saturation > 0:
                x = TF.adjust_saturation(x, factors[2])
            elif op == 3 and self.hue > 0:
                x = TF.adjust_hue(x, hue)
        return x

    def _blur(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        sigma = self._u(g, *self.blur_sigma)
        k = 2 * math.ceil(3 * sigma) + 1
        limit = min(x.shape[-2:])  # reflect padding needs k // 2 < size
        if k > limit:
            k = limit if limit % 2 else limit - 1
        if k < 3:
            return x
        return TF.gaussian_blur(x, [k, k], [sigma, sigma])

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _, h, w = x.shape
        area = h * w
        log_lo, log_hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        for _ in range(10):
            target = area * self._u(g, *self.erase_scale)
            ratio = math.exp(self._u(g, log_lo, log_hi))
            eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < eh < h and 0 < ew < w:
                y0 = int(torch.randint(0, h - eh + 1, (), generator=g))
                x0 = int(torch.randint(0, w - ew + 1, (), generator=g))
                noise = torch.rand((x.shape[0], eh, ew), generator=g).to(device=x.device, dtype=x.dtype)
                x = x.clone()
                x[:, y0 : y0 + eh, x0 : x0 + ew] = noise
                return x
        return x

    # -- the pipeline --------------------------------------------------------------------------------
    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Strong view of ``image``.

        Args:
            image: (3, H, W) tensor in 0-255 (uint8 as the mapper makes it, or floating), channel order
                ``image_format``.
            generator: a CPU ``torch.Generator``; every random draw comes from it.

        Returns:
            a new (3, H, W) tensor of the same dtype and device (the input is not modified); identical
            geometry (no pixel moves), so boxes of ``image`` are boxes of the result.
        """
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"StrongAugmentation expects a (3, H, W) image, got shape {tuple(image.shape)}")
        g = generator
        # one draw per step decides whether it runs, always made: the stream does not depend on the outcome
        do_jitter = self._u(g) < self.color_jitter_prob
        do_gray = self._u(g) < self.grayscale_prob
        do_blur = self._u(g) < self.blur_prob
        do_erase = [self._u(g) < p for p in self.erase_probs]
        if not (do_jitter or do_gray or do_blur or any(do_erase)):
            return image.clone()
        x = image.float() / 255.0
        if self.image_format == "BGR":
            x = x.flip(0)  # torchvision's colour operations assume RGB
        if do_jitter:
            x = self._jitter(x, g).clamp_(0.0, 1.0)
        if do_gray:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if do_blur:
            x = self._blur(x, g)
        for on in do_erase:
            if on:
                x = self._erase(x, g)
        if self.image_format == "BGR":
            x = x.flip(0)
        x = x.clamp(0.0, 1.0) * 255.0
        if image.dtype == torch.uint8:
            return x.round().to(torch.uint8)
        return x.to(image.dtype)

    def seeded(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """``self(image, torch.Generator().manual_seed(seed))``."""
        return self(image, torch.Generator().manual_seed(int(seed)))


class _RecordingAugmentations:
    """Wraps the mapper's ``AugmentationList`` and keeps the TransformList of its last call."""

    def __init__(self, augmentations):
        self.augmentations = augmentations
        self.last = None

    def __call__(self, aug_input):
        self.last = self.augmentations(aug_input)
        return self.last

    def __repr__(self):
        return repr(self.augmentations)


class TargetViewMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` (same augmentations, same random draws) that also stores the geometric
    transform it applied under ``"transforms"`` (a ``TransformList``: resize, flip). Monitoring uses it to map
    target labels fetched separately into the weak view's frame; the model never reads it.

    Use it on annotation-free records (the paired loader strips target annotations before mapping).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.augmentations = _RecordingAugmentations(self.augmentations)

    def __call__(self, dataset_dict):
        out = super().__call__(dataset_dict)
        out["transforms"] = self.augmentations.last
        return out


def build_target_view_mapper(cfg) -> Optional[TargetViewMapper]:
    """The target mapper of the paired loader: a :class:`TargetViewMapper` when TEACHER.ENABLED, else None
    (the loader's default mapper)."""
    if not cfg.TEACHER.ENABLED:
        return None
    return TargetViewMapper(cfg, True)


class StrongViewMapper:
    """A training mapper that also builds the strong view of the image it mapped (in the loader's workers).

    ``mapper(record)`` as it is, plus ``out["image_strong"] = aug.seeded(out["image"], view_seed(seed_base, it,
    index, stream))`` with ``it, index = divmod(record["stream_position"], batch_size)`` -- see the module
    docstring for why that is the image's iteration and place in the global batch. Records of iterations
    before ``first_iteration`` (a teacher's burn-in, which does not use target views) get no strong view.

    Args:
        mapper: the domain's mapper (record -> dict with a (3, H, W) ``"image"``), e.g. detectron2's
            ``DatasetMapper`` or a :class:`TargetViewMapper`.
        aug: the strong pipeline.
        seed_base: the run's view seed base (the paired loader's source seed).
        batch_size: the domain's *global* batch size (SOLVER.IMS_PER_BATCH or SOLVER.TARGET_IMS_PER_BATCH).
        stream: SOURCE_STREAM or TARGET_STREAM.
        first_iteration: the first iteration whose images need a strong view.
    """

    def __init__(self, mapper: Callable[[dict], Any], aug: StrongAugmentation, seed_base: int, batch_size: int,
                 stream: int, first_iteration: int = 0) -> None:
        if int(batch_size) <= 0:
            raise ValueError(f"StrongViewMapper: batch_size must be > 0, got {batch_size}")
        if stream not in (SOURCE_STREAM, TARGET_STREAM):
            raise ValueError(f"StrongViewMapper: stream must be {SOURCE_STREAM} (source) or {TARGET_STREAM} "
                             f"(target), got {stream!r}")
        self.mapper, self.aug = mapper, aug
        self.seed_base, self.batch_size = int(seed_base), int(batch_size)
        self.stream, self.first_iteration = stream, int(first_iteration)

    def __call__(self, record: dict) -> Any:
        if STREAM_POSITION not in record:
            raise ValueError(f"StrongViewMapper: record {record.get('file_name', '<no file_name>')!r} has no "
                             f"{STREAM_POSITION!r}: strong views need the paired loader's positioned stream "
                             f"(data/paired_loader.py)")
        iteration, index = divmod(int(record[STREAM_POSITION]), self.batch_size)
        out = self.mapper(record)
        if out is not None and iteration >= self.first_iteration:
            out[STRONG_IMAGE] = self.aug.seeded(out["image"], view_seed(self.seed_base, iteration, index,
                                                                        self.stream))
        return out

    def __repr__(self):
        return (f"StrongViewMapper({self.mapper!r}, stream={self.stream}, batch_size={self.batch_size}, "
                f"first_iteration={self.first_iteration})")


def strong_view_mapper(cfg, mapper: Callable[[dict], Any], stream: int, seed_base: int) -> Callable[[dict], Any]:
    """``mapper`` wrapped in a :class:`StrongViewMapper` when ``cfg`` trains on strong views of this stream
    (source: INPUT.STRONG_AUG.SOURCE "strong" or "both"; target: INPUT.STRONG_AUG.TARGET with
    TEACHER.ENABLED, from the end of TEACHER.BURN_IN_ITERS), else ``mapper`` itself."""
    s = cfg.INPUT.STRONG_AUG
    if stream == SOURCE_STREAM:
        wanted, batch, first = s.SOURCE != "weak", cfg.SOLVER.IMS_PER_BATCH, 0
    else:
        wanted = bool(s.TARGET) and bool(cfg.TEACHER.ENABLED)
        batch, first = cfg.SOLVER.TARGET_IMS_PER_BATCH, int(cfg.TEACHER.BURN_IN_ITERS)
    if not wanted:
        return mapper
    return StrongViewMapper(mapper, StrongAugmentation.from_config(cfg), seed_base, batch, stream, first)


def add_strong_views(batch: Sequence[dict], aug: StrongAugmentation, seed_base: int, iteration: int, stream: int,
                     world_size: int = 1, rank: int = 0) -> List[dict]:
    """What :class:`StrongViewMapper` adds, for a batch built by hand (no paired loader): copies of the dicts
    with ``"image_strong"``, image ``i`` of this process being image ``i * world_size + rank`` of the step's
    global batch."""
    return [dict(d, **{STRONG_IMAGE: aug.seeded(d["image"], view_seed(seed_base, iteration, i * world_size + rank,
                                                                        stream))})
            for i, d in enumerate(batch)]
