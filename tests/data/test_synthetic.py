"""The embedded demo pair: deterministic, target = documented model(clear), stamp reuse, registered names."""
import dataclasses
import json
import logging
import os

import cv2
import numpy as np
import pytest

import metaalign_det  # noqa: F401

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

from metaalign_det.data.datasets import builtin
from metaalign_det.data.datasets import synthetic as S
from metaalign_det.data.datasets import synthetic_render as R
from tests.helpers.files import tree_bytes

TINY = dataclasses.replace(S.DEFAULT_PARAMS, n_train=3, n_val=2, n_dev=2, n_test=2)


def _read_rgb(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., ::-1]


_tree_bytes = tree_bytes


def test_same_seed_same_bytes(tmp_path):
    a = S.ensure_synthetic_pair(str(tmp_path / "a"), TINY)
    b = S.ensure_synthetic_pair(str(tmp_path / "b"), TINY)
    ta, tb = _tree_bytes(a), _tree_bytes(b)
    assert sorted(ta) == sorted(tb)
    # images of 7 splits (train/val/test in both domains, foggy dev) + 5 depth streams + 7 annotation files
    # + stamp
    assert len(ta) == 2 * (3 + 2 + 2) + 2 + (3 + 3 + 2 + 2 + 2) + 7 + 1
    assert ta == tb
    other = S.ensure_synthetic_pair(str(tmp_path / "c"), dataclasses.replace(TINY, seed=TINY.seed + 1))
    assert _tree_bytes(other)["clear/val/000000.png"] != ta["clear/val/000000.png"]


def test_target_is_the_documented_model_of_the_clear_images(tmp_path):
    out = S.ensure_synthetic_pair(str(tmp_path), TINY)
    for i in range(TINY.n_val):  # val: the same scenes in both domains
        clear = _read_rgb(os.path.join(out, "clear", "val", f"{i:06d}.png"))
        depth = cv2.imread(os.path.join(out, "depth", "val", f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16
        foggy = _read_rgb(os.path.join(out, "foggy", "val", f"{i:06d}.png"))
        expect = R.apply_target_shift(clear, depth, TINY.shift, S.shift_seed(TINY, "val", i))
        np.testing.assert_array_equal(foggy, expect)
    for i in range(TINY.n_test):  # test: the same scenes in both domains, like val
        clear = _read_rgb(os.path.join(out, "clear", "test", f"{i:06d}.png"))
        depth = cv2.imread(os.path.join(out, "depth", "test", f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        foggy = _read_rgb(os.path.join(out, "foggy", "test", f"{i:06d}.png"))
        np.testing.assert_array_equal(foggy, R.apply_target_shift(clear, depth, TINY.shift,
                                                                  S.shift_seed(TINY, "test", i)))
    for i in range(TINY.n_dev):  # target dev: scenes of its own, not rendered clear
        scene = R.render_scene(S.scene_seed(TINY, "target_dev", i), TINY.scene)
        foggy = _read_rgb(os.path.join(out, "foggy", "dev", f"{i:06d}.png"))
        np.testing.assert_array_equal(foggy, R.apply_target_shift(scene.image, scene.depth_cm, TINY.shift,
                                                                  S.shift_seed(TINY, "target_dev", i)))
    assert not os.path.exists(os.path.join(out, "clear", "dev"))
    for i in range(TINY.n_train):  # target train: its own scenes, re-rendered from their seeds
        scene = R.render_scene(S.scene_seed(TINY, "target_train", i), TINY.scene)
        depth = cv2.imread(os.path.join(out, "depth", "target_train", f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(depth, scene.depth_cm)
        foggy = _read_rgb(os.path.join(out, "foggy", "train", f"{i:06d}.png"))
        np.testing.assert_array_equal(
            foggy, R.apply_target_shift(scene.image, depth, TINY.shift, S.shift_seed(TINY, "target_train", i)))


def test_fog_model_terms():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    depth = np.full((16, 32), 2000, np.uint16)  # 20 m
    identity = R.TargetShift(beta=0.0, airlight_jitter=0.0, cast_rgb=(1, 1, 1), blur_sigma=0.0, noise_sigma=0.0)
    np.testing.assert_array_equal(R.apply_target_shift(img, depth, identity, 1), img)
    fog_only = dataclasses.replace(identity, beta=0.03)
    t = np.exp(-0.03 * 20.0)
    airlight = 255 * identity.airlight * np.asarray(identity.airlight_tint)
    expect = np.clip(np.round(img * t + airlight * (1 - t)), 0, 255)
    assert np.abs(R.apply_target_shift(img, depth, fog_only, 1).astype(float) - expect).max() <= 1
    # far away (sky depth) everything becomes the airlight
    sky = np.full((16, 32), 65535, np.uint16)
    np.testing.assert_allclose(R.apply_target_shift(img, sky, fog_only, 1)[0, 0], np.round(airlight), atol=1)


def test_scenes_and_annotations(tmp_path):
    out = S.ensure_synthetic_pair(str(tmp_path), TINY)
    val_clear = json.load(open(os.path.join(out, "annotations", "clear_val.json")))
    val_foggy = json.load(open(os.path.join(out, "annotations", "foggy_val.json")))
    assert val_clear["annotations"] == val_foggy["annotations"]  # same scenes, same boxes
    assert [c["name"] for c in val_clear["categories"]] == list(R.SYNTHETIC_CLASSES)
    src = _read_rgb(os.path.join(out, "clear", "train", "000000.png"))
    tgt_scene = R.render_scene(S.scene_seed(TINY, "target_train", 0), TINY.scene)
    assert not np.array_equal(src, tgt_scene.image)  # unlabelled target scenes are not the source scenes
    heights_m = {"car": 1.5, "person": 1.75, "bus": 3.2}
    ratios = []
    for i in range(20):
        sc = R.render_scene(S.scene_seed(TINY, "source_train", i), TINY.scene)
        h, w = TINY.scene.height, TINY.scene.width
        assert sc.image.shape == (h, w, 3) and sc.depth_cm.shape == (h, w)
        b = sc.boxes
        assert len(b) >= 1
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 3] <= h)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        # perspective: box height x object depth = focal x object height (x the +-10% size jitter)
        for box, k in zip(b, sc.classes):
            x0, y0, x1, y1 = box.astype(int)
            d = np.median(sc.depth_cm[y0:y1, x0:x1][sc.depth_cm[y0:y1, x0:x1] <= 100 * TINY.scene.max_depth]) / 100
            ratios.append((y1 - y0) * d / (TINY.scene.focal_px * heights_m[R.SYNTHETIC_CLASSES[k]]))
    assert 0.85 < np.median(ratios) < 1.15, ratios


def test_stamp_reuse_and_regeneration(tmp_path, monkeypatch, caplog):
    root = str(tmp_path)
    S.ensure_synthetic_pair(root, TINY)

    def boom(*a, **k):
        raise AssertionError("regenerated although the stamp matches")

    with monkeypatch.context() as m:
        m.setattr(S, "_generate", boom)
        S.ensure_synthetic_pair(root, TINY)
    changed = dataclasses.replace(TINY, shift=dataclasses.replace(TINY.shift, beta=0.02))
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        out = S.ensure_synthetic_pair(root, changed)
    assert "is stale" in caplog.text
    assert json.load(open(os.path.join(out, "stamp.json")))["digest"] == changed.digest()
    assert sorted(os.listdir(tmp_path)) == ["synthetic_pair"]  # no temp or old copies left


def test_registered_names_generate_lazily(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "DEFAULT_PARAMS", TINY)
    builtin.register_all_builtin(str(tmp_path), overwrite=True)
    try:
        assert not os.path.exists(tmp_path / "synthetic_pair")  # registering generated nothing
        counts = {n: len(DatasetCatalog.get(n)) for n in builtin.SYNTHETIC_SPLITS}
        assert counts == {"synthetic_clear_train": 3, "synthetic_clear_val": 2,
                          "synthetic_foggy_train": 3, "synthetic_foggy_val": 2, "synthetic_foggy_dev": 2,
                          "synthetic_clear_test": 2, "synthetic_foggy_test": 2}
        # dev, test, val and train scenes are all different (no leakage between the splits)
        files = {n: {open(r["file_name"], "rb").read() for r in DatasetCatalog.get(n)}
                 for n in ("synthetic_foggy_train", "synthetic_foggy_val", "synthetic_foggy_dev",
                           "synthetic_foggy_test")}
        names = list(files)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert not files[a] & files[b], (a, b)
        clear, foggy = DatasetCatalog.get("synthetic_clear_val"), DatasetCatalog.get("synthetic_foggy_val")
        assert [r["annotations"] for r in clear] == [r["annotations"] for r in foggy]
        assert all(os.path.isfile(r["file_name"]) for r in clear + foggy)
        assert MetadataCatalog.get("synthetic_foggy_val").thing_classes == list(R.SYNTHETIC_CLASSES)
    finally:
        builtin.register_all_builtin(overwrite=True)


def test_bad_split_name(tmp_path):
    with pytest.raises(ValueError, match="synthetic pair: no split clear/dev"):
        S.load_synthetic(str(tmp_path), "clear", "dev", TINY)
