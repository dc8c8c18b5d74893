"""The strong views are built in the data loader (data/augmentation.StrongViewMapper) and are the views the
training step used to build itself: the same seed (run seed, iteration, index in the global batch, stream)
and the same pixels, with or without worker processes, after a resume, and none for the target during
burn-in."""
import types

import pytest
import torch

from tests.helpers.configs import quick_cfg

# isort: split
from metaalign_det.data.augmentation import (
    SOURCE_STREAM,
    STREAM_POSITION,
    STRONG_IMAGE,
    TARGET_STREAM,
    StrongAugmentation,
    StrongViewMapper,
    add_strong_views,
    view_seed,
)
from metaalign_det.data.paired_loader import build_paired_train_loader
from metaalign_det.engine.teacher import TeacherStepMixin
from metaalign_det.engine.trainer import MetaAlignTrainer

SEED = 7
TEACHER = ["MODEL.EMA.ENABLED", "True", "TEACHER.ENABLED", "True", "INPUT.STRONG_AUG.SOURCE", "both",
           "INPUT.STRONG_AUG.TARGET", "True", "SEED", str(SEED), "SOLVER.IMS_PER_BATCH", "2",
           "SOLVER.TARGET_IMS_PER_BATCH", "2", "INPUT.RANDOM_FLIP", "horizontal"]


def _batches(cfg, n, start_iter=0):
    loader = MetaAlignTrainer.build_train_loader(cfg, start_iter=start_iter)
    out = []
    for pair in loader:
        out.append(pair)
        if len(out) == n:
            return out, loader.seeds


def _by_position(batches, domain):
    return {d[STREAM_POSITION]: d for pair in batches for d in pair[domain]}


def test_loader_views_are_the_step_seeded_views_pixel_for_pixel(tmp_path):
    """NUM_WORKERS 0, one image size: image i of iteration t is seeded by view_seed(SEED, t, i, stream) -- the
    definition the step used -- and the view is that of the weak image the same dict carries."""
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", *TEACHER)
    aug = StrongAugmentation.from_config(cfg)
    batches, seeds = _batches(cfg, 3)
    assert seeds["source"] == SEED
    for t, (source, target) in enumerate(batches):
        for stream, batch in ((SOURCE_STREAM, source), (TARGET_STREAM, target)):
            assert [d[STREAM_POSITION] for d in batch] == [2 * t, 2 * t + 1]
            for i, d in enumerate(batch):
                want = aug.seeded(d["image"], view_seed(SEED, t, i, stream))
                assert d[STRONG_IMAGE].dtype == torch.uint8 and torch.equal(d[STRONG_IMAGE], want), (t, i, stream)
                assert not torch.equal(d[STRONG_IMAGE], d["image"])
    assert "instances" in batches[0][0][0] and "instances" not in batches[0][1][0]  # target labels stripped
    # what add_strong_views (hand-built batches) gives is the same
    for t, (source, _) in enumerate(batches):
        again = add_strong_views([{"image": d["image"]} for d in source], aug, SEED, t, SOURCE_STREAM)
        assert all(torch.equal(a[STRONG_IMAGE], d[STRONG_IMAGE]) for a, d in zip(again, source))


def test_worker_processes_and_resume_give_the_same_views(tmp_path):
    """Two data-loading workers, and a loader restarted at iteration 2 (resume): every image of the stream
    comes with the weak and strong pixels of the uninterrupted single-process loader. (No random flip here:
    detectron2 draws it from the global numpy RNG, which it reseeds in each worker -- the weak view's business;
    the strong view is a function of the weak one and of the image's place in the stream.)"""
    data, out = tmp_path / "data", tmp_path / "out"
    opts = TEACHER + ["INPUT.RANDOM_FLIP", "none"]
    plain, _ = _batches(quick_cfg(data, out, *opts), 4)
    workers, _ = _batches(quick_cfg(data, out, *opts, "DATALOADER.NUM_WORKERS", "2"), 4)
    resumed, _ = _batches(quick_cfg(data, out, *opts), 2, start_iter=2)
    for domain in (0, 1):
        ref = _by_position(plain, domain)
        for other, positions in ((_by_position(workers, domain), range(8)),
                                 (_by_position(resumed, domain), range(4, 8))):
            assert set(positions) <= set(other), sorted(other)
            for k in positions:
                a, b = ref[k], other[k]
                assert a["file_name"] == b["file_name"], k
                assert torch.equal(a["image"], b["image"]) and torch.equal(a[STRONG_IMAGE], b[STRONG_IMAGE]), k


def test_no_target_views_during_burn_in_and_none_without_strong_augmentation(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    batches, _ = _batches(quick_cfg(data, out, *TEACHER, "TEACHER.BURN_IN_ITERS", "2"), 3)
    assert [all(STRONG_IMAGE in d for d in target) for _, target in batches] == [False, False, True]
    assert all(STRONG_IMAGE in d for source, _ in batches for d in source)  # the source loss uses them throughout
    plain, _ = _batches(quick_cfg(data, out, "SEED", str(SEED)), 1)
    (source, target), = plain
    assert not any(STRONG_IMAGE in d for d in source + target)
    assert [d[STREAM_POSITION] for d in source] == [0, 1]


def test_a_batch_without_strong_views_is_one_clear_error():
    step = types.SimpleNamespace(iter=5)
    batch = [{"file_name": "a.png", "image": torch.zeros(3, 4, 4, dtype=torch.uint8)}]
    match = r"target batch of iteration 5: 'a.png' has no 'image_strong'.*add_strong_views"
    with pytest.raises(ValueError, match=match):
        TeacherStepMixin._strong_images(step, batch, TARGET_STREAM)
    view = torch.ones(3, 4, 4, dtype=torch.uint8)
    assert TeacherStepMixin._strong_images(step, [dict(batch[0], image_strong=view)], SOURCE_STREAM)[0] is view


def test_strong_view_mapper_needs_a_stream_position_and_checks_its_arguments():
    mapper = StrongViewMapper(lambda r: {"image": torch.zeros(3, 8, 8, dtype=torch.uint8)}, StrongAugmentation(),
                              seed_base=1, batch_size=2, stream=TARGET_STREAM)
    with pytest.raises(ValueError, match="record 'x.png' has no 'stream_position'"):
        mapper({"file_name": "x.png"})
    assert STRONG_IMAGE in mapper({"file_name": "x.png", STREAM_POSITION: 3})
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        StrongViewMapper(mapper, StrongAugmentation(), 1, 0, SOURCE_STREAM)
    with pytest.raises(ValueError, match="stream must be"):
        StrongViewMapper(mapper, StrongAugmentation(), 1, 2, 5)


def test_paired_loader_rejects_a_mapper_that_skips_a_record(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out")
    loader = build_paired_train_loader(cfg, mapper=lambda record: None)
    with pytest.raises(ValueError, match="returned None for .*needs a mapped record for every sampled one"):
        next(iter(loader))
