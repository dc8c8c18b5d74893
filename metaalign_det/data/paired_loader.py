"""Paired training data: one labelled *source* batch and one unlabelled *target* batch per step.

Each domain has its own dataset, sampler and aspect-ratio grouping, built with detectron2's public
``build_detection_train_loader`` (so ``DATALOADER.NUM_WORKERS``, ``ASPECT_RATIO_GROUPING`` and the usual
augmentations apply). Target records are stripped of their annotations *before* mapping, so labels that a
target set happens to carry can never reach the model.

Batch sizes are global: ``SOLVER.IMS_PER_BATCH`` source and ``SOLVER.TARGET_IMS_PER_BATCH`` target images
per step over all processes; each process gets its share.

Reproducibility and resume: the samplers' shuffling seeds come from ``cfg.SEED`` (source: SEED,
target: SEED + 1) or, when SEED < 0, from one shared random draw that the trainer checkpoints. On resume the
samplers skip the indices already consumed (``start_iter`` x global batch), so an interrupted run sees the
same stream as an uninterrupted one (exactly so with NUM_WORKERS = 0 and without aspect-ratio grouping or
with images of one aspect ratio; with grouping the batches are re-formed from the same index stream).

Stream positions: each domain's sampler stream is handed to detectron2's loader as ``(position, index)``
pairs (:class:`PositionedSampler`), and the record of ``index`` reaches the mapper with ``"stream_position"``
set to ``position`` -- the record's place in the domain's *global* stream (all processes). The strong views of
teacher-student training are seeded by it (data/augmentation.py), in the loader's workers.

Host->GPU transfer: on a CUDA device the loader puts each batch's images in page-locked (pinned) memory, and
the trainer moves a whole batch to the device once per step with :func:`batch_to_device` (non-blocking
copies), instead of the model copying the images again -- blocking, from pageable memory -- in every
forward pass of the step (the MetaAlign step has 2 to 5). On CPU both are no-ops.
"""
import itertools
import logging
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.common import DatasetFromList
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from ..config import alignment_heads_enabled
from .augmentation import SOURCE_STREAM, STREAM_POSITION, STRONG_IMAGE, TARGET_STREAM, strong_view_mapper
from .catalog import unregistered_dataset
from .mapper import SafeImageMapper

__all__ = [
    "PairedDataLoader",
    "PositionedRecords",
    "PositionedSampler",
    "batch_to_device",
    "pin_batch",
    "ResumableTrainingSampler",
    "build_paired_train_loader",
    "check_dataset_names",
    "unregistered_dataset",
    "strip_annotations",
]

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(Sampler):
    """The index stream of detectron2's ``TrainingSampler`` (same seed, same indices), able to start ``skip``
    global indices in.

    The stream: a ``torch.Generator`` seeded once with ``seed``, then one ``torch.randperm(size)`` after another
    (``arange`` without ``shuffle``), infinitely; process ``rank`` of ``world_size`` takes every
    ``world_size``-th index from ``skip + rank``. ``skip`` counts indices of the global stream (all
    processes), i.e. ``start_iter * total_batch_size``. ``seed`` None: one random seed shared by all processes
    (``comm.shared_random_seed``), as TrainingSampler does. Written out rather than inherited because
    TrainingSampler keeps its seed, rank and stream in private members.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None, skip: int = 0) -> None:
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"ResumableTrainingSampler(size={size!r}): expected a positive dataset size")
        self.size = size
        self.shuffle = bool(shuffle)
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self.skip = int(skip)
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()

    def indices(self) -> Iterator[int]:
        """The global (all-process) infinite index stream from its start."""
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from torch.arange(self.size).tolist()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self.indices(), self.skip + self.rank, None, self.world_size)


class PositionedSampler(Sampler):
    """``(stream position, index)`` for every index this process's :class:`ResumableTrainingSampler` yields:
    the position is the index's place in the global stream (from ``skip + rank``, every ``world_size``-th)."""

    def __init__(self, sampler: ResumableTrainingSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        s = self.sampler
        return zip(itertools.count(s.skip + s.rank, s.world_size), iter(s))


class PositionedRecords(Dataset):
    """Map-style dataset over ``(stream position, index)`` keys: ``mapper(record index with "stream_position")``.

    The records are kept serialized as detectron2's ``DatasetFromList`` keeps them (workers share them without
    copies); every access gets a fresh copy of the record, so the mapper may change it.
    """

    def __init__(self, records: Sequence[dict], mapper: Callable[[dict], dict]) -> None:
        self._records = DatasetFromList(list(records), copy=False, serialize=True)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key: Tuple[int, int]) -> dict:
        position, index = key
        out = self.mapper({**self._records[index], STREAM_POSITION: int(position)})
        if out is None:  # detectron2's "skip this record" -- a skipped record would shift every later batch
            raise ValueError(f"the training mapper returned None for {self._records[index].get('file_name')!r}; "
                             f"the paired loader needs a mapped record for every sampled one")
        return out


def check_dataset_names(key: str, names: Sequence[str], allow_empty: bool = False) -> None:
    """Raise one clear ValueError if ``names`` (value of cfg ``key``) is empty (unless ``allow_empty``) or has
    an unregistered name (:func:`unregistered_dataset`)."""
    if not names and not allow_empty:
        raise ValueError(f"{key} is empty: name at least one registered dataset (or set DATASETS.PAIR to your pair "
                         f"manifest, see configs/user_pair/)")
    missing = unregistered_dataset(names)
    if missing:
        name, close = missing
        hint = f" (similar registered names: {', '.join(close)})" if close else ""
        raise ValueError(f"{key}: dataset '{name}' is not registered{hint}")


def _classes(names) -> Optional[List[str]]:
    classes = None
    for n in names:
        c = MetadataCatalog.get(n).get("thing_classes", None)
        if c is None:
            continue
        if classes is not None and list(c) != list(classes):
            raise ValueError(f"datasets {list(names)} disagree on thing_classes: {classes} vs {list(c)}")
        classes = list(c)
    return classes


def check_class_lists(cfg: CfgNode) -> None:
    """Source and target must declare the same classes (when both declare them), and match NUM_CLASSES."""
    src = _classes(cfg.DATASETS.TRAIN)
    tgt = _classes(cfg.DATASETS.TRAIN_TARGET) if cfg.DATASETS.TRAIN_TARGET else None
    if src is not None and tgt is not None and src != tgt:
        raise ValueError(
            f"class lists differ: DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} has {len(src)} classes {src}, "
            f"DATASETS.TRAIN_TARGET {list(cfg.DATASETS.TRAIN_TARGET)} has {len(tgt)} classes {tgt}"
        )
    if src is not None and len(src) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but DATASETS.TRAIN "
            f"{list(cfg.DATASETS.TRAIN)} has {len(src)} classes {src}"
        )


def strip_annotations(dataset_dicts: List[dict]) -> List[dict]:
    """Copies of the records without any label field (target images are unlabelled by definition)."""
    drop = ("annotations", "sem_seg_file_name", "pan_seg_file_name", "segments_info")
    return [{k: v for k, v in d.items() if k not in drop} for d in dataset_dicts]


def _has_box(record) -> bool:
    return any(not a.get("iscrowd", 0) for a in record.get("annotations", ()))


def labelled_source_dicts(cfg: CfgNode) -> List[dict]:
    """The DATASETS.TRAIN records, without the images that have no (non-crowd) box when
    DATALOADER.FILTER_EMPTY_ANNOTATIONS is set (as detectron2 filters them).

    A source set in which no image has a box is one clear error naming it, instead of detectron2's
    ``AssertionError: No valid data found`` (or a source-only model that never sees a label).
    """
    names = list(cfg.DATASETS.TRAIN)
    try:
        dicts = get_detection_dataset_dicts(
            names,
            filter_empty=False,
            min_keypoints=0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    except AssertionError as e:  # detectron2: "Dataset 'x' is empty!"
        raise ValueError(f"DATASETS.TRAIN {names}: {e}") from None
    labelled = [d for d in dicts if _has_box(d)]
    if not labelled:
        dropped = (" and DATALOADER.FILTER_EMPTY_ANNOTATIONS=True drops every image without one"
                   if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS else "")
        raise ValueError(
            f"DATASETS.TRAIN {names}: none of its {len(dicts)} images has a box{dropped}; the source set must "
            f"be labelled (an unlabelled set belongs in DATASETS.TRAIN_TARGET)"
        )
    if not cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        return dicts
    if len(labelled) < len(dicts):
        logger.info("Removed %d images with no usable annotations. %d images left.",
                    len(dicts) - len(labelled), len(labelled))
    return labelled


def _domain_loader(cfg, dataset_dicts, total_batch_size, seed, skip, mapper, stream, view_seed_base):
    sampler = ResumableTrainingSampler(len(dataset_dicts), shuffle=True, seed=seed, skip=skip)
    # an unreadable image: named, replaced by another of the same domain; then the strong view, if any, of
    # whatever was mapped (seeded by the sampled record's stream position)
    mapper = strong_view_mapper(cfg, SafeImageMapper(mapper, fallback=dataset_dicts), stream, view_seed_base)
    loader = build_detection_train_loader(
        dataset=PositionedRecords(dataset_dicts, mapper),
        mapper=None,
        sampler=PositionedSampler(sampler),
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return loader, sampler.seed


_IMAGE_KEYS = ("image", STRONG_IMAGE)


def pin_batch(batch: Optional[List[dict]]) -> Optional[List[dict]]:
    """The batch (list of detectron2 input dicts) with each image tensor (``"image"``, and ``"image_strong"``
    where the loader built one) in page-locked memory (a copy; needs CUDA), so that :func:`batch_to_device`
    can copy it asynchronously. None stays None."""
    if batch is None:
        return None
    out = []
    for d in batch:
        pinned = {k: d[k].pin_memory() for k in _IMAGE_KEYS if torch.is_tensor(d.get(k)) and not d[k].is_pinned()}
        out.append({**d, **pinned} if pinned else d)
    return out


def _instances_to(inst: Instances, device: torch.device, non_blocking: bool) -> Instances:
    # Instances.to / Boxes.to take no non_blocking argument: copy the fields one by one
    out = Instances(inst.image_size)
    for name, value in inst.get_fields().items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=non_blocking)
        elif isinstance(value, Boxes):  # and subclasses (RotatedBoxes): rebuilt around the moved tensor
            value = type(value)(value.tensor.to(device, non_blocking=non_blocking))
        elif hasattr(value, "to"):
            value = value.to(device)
        out.set(name, value)
    return out


def batch_to_device(batch: Optional[List[dict]], device: Union[str, torch.device],
                    non_blocking: bool = True) -> Optional[List[dict]]:
    """The batch with every tensor and ``Instances`` of its dicts on ``device`` (new dicts; other values
    kept). ``non_blocking``: asynchronous host->GPU copies where the source is pinned (:func:`pin_batch`);
    from pageable memory torch copies synchronously anyway. A batch on CPU for a CPU device is returned
    as it is. None stays None."""
    if batch is None:
        return None
    device = torch.device(device)
    if device.type == "cpu" and all(not torch.is_tensor(d.get("image")) or d["image"].device.type == "cpu"
                                    for d in batch):
        return batch
    out = []
    for d in batch:
        moved = {}
        for k, v in d.items():
            if torch.is_tensor(v):
                v = v.to(device, non_blocking=non_blocking)
            elif isinstance(v, Instances):
                v = _instances_to(v, device, non_blocking)
            moved[k] = v
        out.append(moved)
    return out


class PairedDataLoader:
    """Iterable over ``(source_batch, target_batch)``; ``target_batch`` is None for source-only training.

    Attributes:
        seeds (dict): the sampler seeds actually used, {"source": int, "target": int or None}; the trainer
            checkpoints them so a resumed run rebuilds the same streams.
        pin_memory (bool): batches come with their images in page-locked memory (:func:`pin_batch`; only
            for a CUDA device).
    """

    def __init__(self, source: Iterable[list], target: Optional[Iterable[list]],
                 seeds: Dict[str, Optional[int]], pin_memory: bool = False) -> None:
        self.source, self.target, self.seeds = source, target, seeds
        self.pin_memory = bool(pin_memory)

    def __iter__(self) -> Iterator[Tuple[list, Optional[list]]]:
        # A generator: worker processes start at the first next(), not when the trainer calls iter() --
        # so a loader replaced on resume never spawns any.
        pairs = ((s, None) for s in self.source) if self.target is None else zip(self.source, self.target)
        for s, t in pairs:
            yield (pin_batch(s), pin_batch(t)) if self.pin_memory else (s, t)


def build_paired_train_loader(
    cfg: CfgNode,
    start_iter: int = 0,
    seeds: Optional[Dict[str, Optional[int]]] = None,
    mapper: Optional[Callable[[dict], dict]] = None,
    target_mapper: Optional[Callable[[dict], dict]] = None,
) -> PairedDataLoader:
    """Build the paired loader for ``cfg``.

    Args:
        start_iter: iterations already done (resume): the samplers skip what they already produced.
        seeds: sampler seeds to reuse ({"source", "target"}), e.g. from a checkpoint; default from cfg.SEED.
        mapper: the source mapper (default ``DatasetMapper(cfg, True)``); the target uses the same
            augmentations on annotation-free records.
        target_mapper: the target's mapper if it needs its own (teacher-student: one that also records the
            geometric transform, data/augmentation.py); default ``mapper``.
    """
    check_dataset_names("DATASETS.TRAIN", cfg.DATASETS.TRAIN)
    if alignment_heads_enabled(cfg) and not cfg.DATASETS.TRAIN_TARGET:
        raise ValueError(
            "DATASETS.TRAIN_TARGET is empty but MODEL.DA_HEADS is enabled: name the unlabelled target "
            "dataset(s), or set MODEL.DA_HEADS.IMG_ENABLED/INS_ENABLED (and MODEL.SWDA.LOCAL_ENABLED/"
            "GLOBAL_ENABLED) False for source-only training"
        )
    if cfg.DATASETS.TRAIN_TARGET:
        check_dataset_names("DATASETS.TRAIN_TARGET", cfg.DATASETS.TRAIN_TARGET)
    check_class_lists(cfg)
    mapper = mapper if mapper is not None else DatasetMapper(cfg, True)
    if seeds is None:
        base = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        seeds = {"source": int(base), "target": int(base) + 1}

    source_dicts = labelled_source_dicts(cfg)
    # the source sampler's seed is also the strong views' seed base (data/augmentation.py)
    s_seed = int(seeds["source"]) if seeds.get("source") is not None else comm.shared_random_seed()
    source, s_seed = _domain_loader(
        cfg, source_dicts, cfg.SOLVER.IMS_PER_BATCH, s_seed,
        start_iter * cfg.SOLVER.IMS_PER_BATCH, mapper, SOURCE_STREAM, s_seed,
    )
    target, t_seed = None, None
    if cfg.DATASETS.TRAIN_TARGET:
        # filter_empty=False: a target image is never "empty" -- we do not know (or use) its labels.
        target_dicts = strip_annotations(
            get_detection_dataset_dicts(cfg.DATASETS.TRAIN_TARGET, filter_empty=False)
        )
        target, t_seed = _domain_loader(
            cfg, target_dicts, cfg.SOLVER.TARGET_IMS_PER_BATCH, seeds["target"],
            start_iter * cfg.SOLVER.TARGET_IMS_PER_BATCH, target_mapper if target_mapper is not None else mapper,
            TARGET_STREAM, s_seed,
        )
        logger.info(
            "Paired loader: %d source images (%s), %d target images (%s, labels stripped)",
            len(source_dicts), ",".join(cfg.DATASETS.TRAIN), len(target_dicts),
            ",".join(cfg.DATASETS.TRAIN_TARGET),
        )
    # page-locked batches only where they help (a CUDA device) and can exist (pinning needs CUDA)
    pin = torch.device(cfg.MODEL.DEVICE).type == "cuda" and torch.cuda.is_available()
    return PairedDataLoader(source, target, {"source": s_seed, "target": t_seed}, pin_memory=pin)
