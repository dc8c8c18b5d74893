"""Images cut short or damaged: found at load (end markers), by a full decode, and in the training mapper."""
import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

import metaalign_det  # noqa: F401

# isort: split
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader

from metaalign_det.data import SafeImageMapper, UnreadableImageError
from metaalign_det.data.datasets.coco_cache import load_coco_records
from metaalign_det.data.datasets.image_files import (
    check_image_files,
    collect_unreadable_images,
    load_image_folder,
    verify_image,
)

from . import fake_trees as ft

W, H = 40, 24


def image_bytes(fmt, seed=0, w=W, h=H):
    """A real encoded image (random pixels, so the entropy-coded data is long)."""
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def truncated(fmt, seed=0):
    data = image_bytes(fmt, seed)
    return data[: len(data) // 2]


def damaged_in_the_middle_png(seed=0):
    """Same length, header and IEND intact, 64 zero bytes in the middle of the compressed data."""
    data = bytearray(image_bytes("PNG", seed))
    n = len(data)
    data[n // 2: n // 2 + 64] = b"\x00" * 64
    return bytes(data)


def record(path, image_id=0, h=H, w=W):
    return {"file_name": path, "image_id": image_id, "height": h, "width": w, "annotations": []}


@pytest.mark.parametrize("fmt, ext", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_image_cut_in_half_passes_the_header_but_is_skipped_at_load(tmp_path, caplog, fmt, ext):
    good = write(str(tmp_path / f"good{ext}"), image_bytes(fmt, 0))
    bad = write(str(tmp_path / f"bad{ext}"), truncated(fmt, 1))
    with Image.open(bad) as im:  # the header alone says nothing is wrong ...
        assert im.size == (W, H)
    with pytest.raises(OSError, match="truncated"):  # ... decoding fails, without naming the file
        Image.open(bad).load()
    with caplog.at_level(logging.WARNING), collect_unreadable_images() as skipped:
        kept = check_image_files([record(good, 0), record(bad, 1)], "my set")
    assert [r["file_name"] for r in kept] == [good]
    assert f"my set: skipping 1 unreadable image(s) of 2, first: {bad} (cut short (no {fmt} end marker" in caplog.text
    assert [p for p, _ in skipped] == [bad] and "truncated" in skipped[0][1]


def test_truncated_jpeg_through_a_coco_loader(tmp_path, caplog):
    root = str(tmp_path / "imgs")
    for i in range(3):
        write(os.path.join(root, f"{i}.jpg"), truncated("JPEG", i) if i == 1 else image_bytes("JPEG", i))
    ft.write_coco(str(tmp_path / "ann.json"),
                  images=[{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in range(3)],
                  categories=[(1, "car")], annotations=[])
    with caplog.at_level(logging.WARNING):
        recs = load_coco_records(str(tmp_path / "ann.json"), root, ["car"])
    assert [os.path.basename(r["file_name"]) for r in recs] == ["0.jpg", "2.jpg"]
    assert "skipping 1 unreadable image(s) of 3" in caplog.text and os.path.join(root, "1.jpg") in caplog.text


def test_data_after_the_end_marker_is_kept(tmp_path, caplog):
    # e.g. a phone's motion photo: a valid JPEG with more than the inspected tail appended after FF D9
    path = write(str(tmp_path / "motion.jpg"), image_bytes("JPEG") + os.urandom(4096).replace(b"\xff", b"\x00"))
    with caplog.at_level(logging.WARNING):
        kept = check_image_files([record(path)], "ctx")
    assert [r["file_name"] for r in kept] == [path] and "skipping" not in caplog.text


def test_verify_image_decodes_in_full(tmp_path):
    assert verify_image(write(str(tmp_path / "ok.png"), image_bytes("PNG"))) is None
    reason = verify_image(write(str(tmp_path / "mid.png"), damaged_in_the_middle_png()))
    assert reason is not None and reason.startswith("OSError: ")
    cut = write(str(tmp_path / "cut.jpg"), truncated("JPEG"))
    assert verify_image(cut).startswith("OSError: image file is truncated")
    assert verify_image(write(str(tmp_path / "html.png"), b"<html>no</html>")).startswith("UnidentifiedImageError")


def test_damage_in_the_middle_is_left_to_the_full_decode(tmp_path):
    # Same length, both ends intact: the cheap load check cannot see it (documented); verify_image and the
    # mapper do.
    path = write(str(tmp_path / "mid.png"), damaged_in_the_middle_png())
    assert [r["file_name"] for r in check_image_files([record(path)], "ctx")] == [path]
    assert verify_image(path) is not None


def test_image_folder_lists_recursively_and_reads_sizes(tmp_path):
    root = tmp_path / "target"
    write(str(root / "b" / "x.PNG"), image_bytes("PNG", 0, w=30, h=20))
    write(str(root / "a.jpg"), image_bytes("JPEG", 1))
    write(str(root / "notes.txt"), b"not an image")
    write(str(root / ".hidden" / "c.jpg"), image_bytes("JPEG", 2))
    recs = load_image_folder(str(root))
    assert [(os.path.relpath(r["file_name"], root), r["image_id"], r["width"], r["height"]) for r in recs] == [
        ("a.jpg", 0, W, H), (os.path.join("b", "x.PNG"), 1, 30, 20)]
    assert all("annotations" not in r for r in recs)
    assert [os.path.basename(r["file_name"]) for r in load_image_folder(str(root), [".png"])] == ["x.PNG"]
    with pytest.raises(ValueError, match=r"no images \(\*.bmp\) under .*target \(empty split\)"):
        load_image_folder(str(root), [".bmp"])
    with pytest.raises(FileNotFoundError, match=r"image folder .*nowhere does not exist"):
        load_image_folder(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------------------------------------
# the training mapper


def _mapper_cfg():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def test_safe_mapper_replaces_a_truncated_image_naming_it_once(tmp_path, caplog):
    # Records that never went through check_image_files, as those of a dataset registered with detectron2's
    # own register_coco_instances (or an image cut short after loading).
    good = write(str(tmp_path / "good.png"), image_bytes("PNG", 0))
    bad = write(str(tmp_path / "bad.jpg"), truncated("JPEG", 1))
    inner = DatasetMapper(_mapper_cfg(), is_train=True)
    with pytest.raises(OSError, match=r"^image file is truncated \(\d+ bytes not processed\)$"):
        inner(record(bad))  # what training would die of, at whatever iteration, without the file's name
    mapper = SafeImageMapper(inner, fallback=[record(good, 0), record(bad, 1)])
    out = mapper(record(good))
    assert tuple(out["image"].shape) == (3, H, W) and out["file_name"] == good
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # sampled again and again: replaced each time, one warning
            out = mapper(record(bad, 1))
            assert out["file_name"] == good and tuple(out["image"].shape) == (3, H, W)
    assert caplog.text.count("skipping unreadable image") == 1
    assert f"skipping unreadable image {bad} (OSError: image file is truncated" in caplog.text
    assert "1 unreadable image(s) skipped so far" in caplog.text
    assert list(mapper.skipped) == [bad]
    # without a fallback: detectron2's "skip this one"
    assert SafeImageMapper(inner)(record(bad)) is None


def test_safe_mapper_error_mode_and_limits(tmp_path):
    bad = [write(str(tmp_path / f"bad{i}.jpg"), truncated("JPEG", i)) for i in range(2)]
    inner = DatasetMapper(_mapper_cfg(), is_train=True)
    with pytest.raises(UnreadableImageError, match=rf"cannot decode image {bad[0]} \(OSError: image file is truncated"):
        SafeImageMapper(inner, on_unreadable="error")(record(bad[0]))
    mapper = SafeImageMapper(inner, max_skipped=1)
    assert mapper(record(bad[0])) is None
    with pytest.raises(UnreadableImageError, match=rf"2 images could not be decoded \(more than max_skipped=1\), "
                                                   rf"first {bad[0]}, last {bad[1]} .*--verify-images"):
        mapper(record(bad[1]))
    # nothing readable to replace it with: a named error, not an endless loop
    with pytest.raises(UnreadableImageError, match=rf"no readable image in 1000 random draws from 2 images "
                                                   rf"\(2 unreadable, first {bad[0]}\)"):
        SafeImageMapper(inner, fallback=[record(p) for p in bad])(record(bad[0]))
    with pytest.raises(ValueError, match="on_unreadable must be one of"):
        SafeImageMapper(inner, on_unreadable="ignore")


def test_safe_mapper_does_not_hide_other_errors(tmp_path):
    good = write(str(tmp_path / "good.png"), image_bytes("PNG"))
    mapper = SafeImageMapper(DatasetMapper(_mapper_cfg(), is_train=True), fallback=[record(good)])
    with pytest.raises(ValueError, match="Mismatched image shape"):  # a wrong size is not a decode error
        mapper(record(good, h=H + 1))
    assert not mapper.skipped


def test_training_loader_replaces_the_truncated_image(tmp_path, caplog):
    """The paired loader's way: one SafeImageMapper per domain, its records as the fallback."""
    good = [write(str(tmp_path / f"g{i}.png"), image_bytes("PNG", i)) for i in range(3)]
    bad = write(str(tmp_path / "bad.jpg"), truncated("JPEG", 9))
    dicts = [record(p, i) for i, p in enumerate(good + [bad])]
    mapper = SafeImageMapper(DatasetMapper(_mapper_cfg(), True), fallback=dicts)
    loader = build_detection_train_loader(dataset=dicts, mapper=mapper, total_batch_size=2, num_workers=0,
                                          aspect_ratio_grouping=False)
    seen = []
    with caplog.at_level(logging.WARNING):
        for _, batch in zip(range(6), loader):  # 12 draws = 3 shuffled passes over the 4: the bad one 3 times
            seen += [d["file_name"] for d in batch]
    assert len(seen) == 12 and bad not in seen and set(seen) <= set(good)
    assert f"skipping unreadable image {bad}" in caplog.text
