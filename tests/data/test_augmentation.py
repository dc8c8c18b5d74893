"""Weak (mapper: resize + flip) and strong (photometric) views: seeding, identity, erasing, colour order, and
boxes that stay valid on both views where the geometry changes."""
import numpy as np
import pytest
import torch
from PIL import Image

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
import detectron2.data.transforms as T
from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode

from metaalign_det.data.augmentation import StrongAugmentation, TargetViewMapper, view_seed
from metaalign_det.data.paired_loader import strip_annotations

_OFF = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, erase_probs=())


def _image(h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)


def test_strong_view_is_seeded_and_leaves_its_input_alone():
    aug = StrongAugmentation()
    img = _image()
    before = img.clone()
    a, b = aug.seeded(img, 123), aug.seeded(img, 123)
    assert torch.equal(a, b)  # same seed, same view
    assert torch.equal(img, before)
    assert a.shape == img.shape and a.dtype == torch.uint8
    others = [aug.seeded(img, s) for s in range(1, 6)]
    assert all(not torch.equal(a, o) for o in others)  # every default step has p >= 0.2: views differ
    assert all(not torch.equal(o, img) for o in others)
    f = aug.seeded(img.float(), 123)  # floating input: same view, kept floating
    assert f.dtype == torch.float32 and (f - a.float()).abs().max() <= 1.0


def test_all_probabilities_zero_is_the_identity():
    img = _image()
    assert torch.equal(StrongAugmentation(**_OFF).seeded(img, 7), img)


def test_erasing_replaces_one_rectangle_and_nothing_else():
    aug = StrongAugmentation(**dict(_OFF, erase_probs=(1.0,), erase_scale=(0.05, 0.1), erase_ratio=(0.5, 2.0)))
    img = torch.full((3, 60, 80), 100, dtype=torch.uint8)
    for seed in range(5):
        out = aug.seeded(img, seed)
        changed = (out != img).any(0)
        ys, xs = torch.nonzero(changed, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        # the changed pixels lie in one axis-aligned rectangle of the configured size (noise may equal 100
        # on a few pixels, hence >= 0.9 of the rectangle)
        assert changed[y0:y1, x0:x1].float().mean() >= 0.9
        assert not changed.clone().index_put_((ys, xs), torch.tensor(False)).any()
        assert 0.04 * 60 * 80 <= (y1 - y0) * (x1 - x0) <= 0.11 * 60 * 80


def test_colour_operations_use_rgb_weights_on_bgr_images():
    blue_bgr = torch.zeros(3, 8, 8, dtype=torch.uint8)
    blue_bgr[0] = 255  # channel 0 is blue in BGR
    gray = StrongAugmentation(**dict(_OFF, grayscale_prob=1.0)).seeded(blue_bgr, 0)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert abs(int(gray[0, 0, 0]) - round(0.114 * 255)) <= 1  # blue's luma weight, not red's (0.299)
    gray_rgb = StrongAugmentation(**dict(_OFF, grayscale_prob=1.0), image_format="RGB").seeded(blue_bgr, 0)
    assert abs(int(gray_rgb[0, 0, 0]) - round(0.299 * 255)) <= 1  # read as RGB, channel 0 is red


def test_view_seed_separates_iterations_images_and_streams():
    seeds = {view_seed(0, it, i, s) for it in range(3) for i in range(4) for s in (0, 1)}
    assert len(seeds) == 24
    assert view_seed(5, 2, 3, 1) == view_seed(5, 2, 3, 1)
    assert view_seed(5, 2, 3, 1) != view_seed(6, 2, 3, 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(color_jitter_prob=1.5), "COLOR_JITTER_PROB"),
    (dict(hue=0.7), "HUE"),
    (dict(blur_sigma=(2.0, 1.0)), "BLUR_SIGMA"),
    (dict(erase_scale=(0.0, 0.2)), "ERASE_SCALE"),
    (dict(image_format="L"), "INPUT.FORMAT"),
])
def test_bad_values_name_their_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StrongAugmentation(**kwargs)


def _object_box(image: torch.Tensor, inside, outside):
    """Bounding box (XYXY, pixel edges) of the pixels closer to the object's value than to the background's."""
    lum = image.float().mean(0)
    mask = lum > (inside + outside) / 2.0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_boxes_follow_the_geometry_and_hold_on_the_strong_view(tmp_path):
    """Resize x1.6 + forced flip: the source mapper moves the box with the object; the target mapper draws the
    same view and records the transform that moves a label the same way; the strong view (pointwise colour
    changes) keeps the object exactly where the box says."""
    h, w, box = 40, 80, [10.0, 8.0, 30.0, 24.0]
    pixels = np.full((h, w, 3), 30, dtype=np.uint8)
    pixels[8:24, 10:30] = 230
    path = str(tmp_path / "img.png")
    Image.fromarray(pixels).save(path)
    record = {"file_name": path, "image_id": 1, "height": h, "width": w,
              "annotations": [{"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}]}
    augs = [T.ResizeShortestEdge((64,), max_size=1000, sample_style="choice"), T.RandomFlip(prob=1.0)]
    source = DatasetMapper(is_train=True, augmentations=list(augs), image_format="BGR")(record)
    target = TargetViewMapper(is_train=True, augmentations=list(augs), image_format="BGR")(
        strip_annotations([record])[0])

    gt = source["instances"].gt_boxes.tensor[0]
    torch.testing.assert_close(gt, torch.tensor([80.0, 12.8, 112.0, 38.4]))  # flipped and scaled
    torch.testing.assert_close(_object_box(source["image"], 230, 30), gt, atol=1.5, rtol=0)
    assert "instances" not in target and "annotations" not in target
    assert torch.equal(target["image"], source["image"])
    moved = torch.as_tensor(target["transforms"].apply_box(np.array([box], dtype=np.float32)))[0]
    torch.testing.assert_close(moved, gt)

    strong_aug = StrongAugmentation(color_jitter_prob=1.0, grayscale_prob=0.5, blur_prob=0.0, erase_probs=())
    for seed in range(4):
        strong = strong_aug.seeded(target["image"], seed)
        assert strong.shape == target["image"].shape
        inside = strong.float().mean(0)[25, 96].item()
        outside = strong.float().mean(0)[5, 5].item()
        assert abs(inside - outside) > 20  # the object stays visible
        torch.testing.assert_close(_object_box(strong, inside, outside), gt, atol=1.5, rtol=0)
