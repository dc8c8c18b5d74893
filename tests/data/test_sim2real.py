"""The sim -> real pair: deterministic, stamped per variant, car-only labels, and each part of the real style
changing what it should and nothing else; registered names, bad input, the picture."""
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
from metaalign_det.data.datasets import sim2real as S
from metaalign_det.data.datasets import sim2real_render as R
from tests.helpers.files import tree_bytes

TINY = dataclasses.replace(S.DEFAULT_SIM2REAL_PARAMS, n_train=3, n_val=2, n_dev=2, n_test=2)
REAL = R.RealStyle()
SCENE = R.SimScene()
N_SCENES = 12  # scenes per render-level check (a few ms each)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _seeds(n=N_SCENES, stream=5):
    return [(TINY.seed, stream, i) for i in range(n)]


_tree_bytes = tree_bytes


def _read_rgb(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., ::-1]


# ---------------------------------------------------------------------------------------------------------
# on disk


def test_same_seed_same_bytes(tmp_path):
    trees = {}
    for name in ("a", "b"):
        for variant in ("sim", "real"):
            trees[name, variant] = _tree_bytes(S.ensure_sim2real(str(tmp_path / name), variant, TINY))
    for variant in ("sim", "real"):
        assert trees["a", variant] == trees["b", variant]
    # sim: train 3 + val 2 + test 2 images, 3 annotation files, stamp; real: + dev 2, 4 annotation files
    assert len(trees["a", "sim"]) == 3 + 2 + 2 + 3 + 1
    assert len(trees["a", "real"]) == 3 + 2 + 2 + 2 + 4 + 1
    assert sorted(os.listdir(tmp_path / "a" / "sim2real_pair")) == ["real", "sim"]
    other = S.ensure_sim2real(str(tmp_path / "c"), "sim", dataclasses.replace(TINY, seed=TINY.seed + 1))
    assert _tree_bytes(other)["val/000000.png"] != trees["a", "sim"]["val/000000.png"]


def test_files_are_the_renderer_output(tmp_path):
    out = S.ensure_sim2real(str(tmp_path), "real", TINY)
    coco = json.load(open(os.path.join(out, "annotations", "test.json")))
    for i in range(TINY.n_test):
        r = R.render_sim2real(S.scene_seed(TINY, "real", "test", i), TINY.scene, TINY.real)
        np.testing.assert_array_equal(_read_rgb(os.path.join(out, "test", f"{i:06d}.png")), r.image)
        anns = [a for a in coco["annotations"] if a["image_id"] == i]
        assert [a["bbox"] for a in anns] == [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in r.boxes.tolist()]
        assert [a["iscrowd"] for a in anns] == r.iscrowd.tolist()
    # the test and val scenes are the sim ones; train and dev have scenes of their own
    assert S.scene_seed(TINY, "real", "test", 1) == S.scene_seed(TINY, "sim", "test", 1)
    assert S.scene_seed(TINY, "real_camera", "val", 1) == S.scene_seed(TINY, "sim", "val", 1)
    seeds = {S.scene_seed(TINY, v, s, 0) for v, s in [("sim", "train"), ("real", "train"), ("real", "dev"),
                                                        ("real", "val"), ("real", "test")]}
    assert len(seeds) == 5


def test_stamp_reuse_and_regeneration_per_variant(tmp_path, monkeypatch, caplog):
    root = str(tmp_path)
    for v in ("sim", "real", "real_texture"):
        S.ensure_sim2real(root, v, TINY)
    made = []
    real_generate = S._generate

    def recording(out_dir, params, variant):
        made.append(variant)
        real_generate(out_dir, params, variant)

    monkeypatch.setattr(S, "_generate", recording)
    for v in ("sim", "real", "real_texture"):
        S.ensure_sim2real(root, v, TINY)
    assert made == []  # stamps match: nothing regenerated
    loud = TINY.real.noise_sigma + 2.0  # a sensor strength other than the default
    louder = dataclasses.replace(TINY, real=dataclasses.replace(TINY.real, noise_sigma=loud))
    with caplog.at_level(logging.INFO, logger="metaalign_det"):
        for v in ("sim", "real", "real_texture"):
            S.ensure_sim2real(root, v, louder)
    assert made == ["real"]  # neither the source nor the texture-only variant depends on the sensor's noise
    assert "sim2real pair (real)" in caplog.text and "is stale" in caplog.text
    stamp = json.load(open(os.path.join(root, "sim2real_pair", "real", "stamp.json")))
    assert stamp["digest"] == louder.digest("real") and stamp["stamp"]["style"]["sensor"]["noise_sigma"] == loud
    assert S.sim2real_is_current(root, "real", louder) and not S.sim2real_is_current(root, "real", TINY)
    assert sorted(os.listdir(tmp_path / "sim2real_pair")) == ["real", "real_texture", "sim"]  # no temp copies
    # what a stamp records: the sim one no style, a one-part one that part's strengths only
    assert TINY.stamp("sim")["style"] == {}
    assert TINY.stamp("real_camera")["style"] == {"camera": {f: getattr(REAL, f) for f in R.PART_FIELDS["camera"]}}


def test_every_strength_belongs_to_one_part():
    strengths = [f.name for f in dataclasses.fields(R.RealStyle) if f.name not in R.PARTS]
    listed = [f for p in R.PARTS for f in R.PART_FIELDS[p]]
    assert sorted(listed) == sorted(strengths)  # a new strength missing here would be left out of the stamps
    assert REAL.parts_on == R.PARTS and R.SIM_STYLE.parts_on == ()
    assert REAL.only("layout").parts_on == ("layout",) and REAL.only("layout").noise_sigma == REAL.noise_sigma


# ---------------------------------------------------------------------------------------------------------
# annotations


def test_labels_are_cars_with_boxes_inside_the_image(tmp_path):
    out = S.ensure_sim2real(str(tmp_path), "real", TINY)
    recs = S.load_sim2real(str(tmp_path), "real", "train", params=TINY)
    assert len(recs) == TINY.n_train and all(os.path.dirname(r["file_name"]).startswith(out) for r in recs)
    h, w = SCENE.height, SCENE.width
    n_boxes = 0
    for style in (R.SIM_STYLE, REAL):
        for seed in _seeds():
            r = R.render_sim2real(seed, SCENE, style)
            b = r.boxes
            n_boxes += len(b)
            assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 3] <= h)
            assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
            car = r.labels == R.LABELS.index("car")
            covered = np.zeros_like(car)
            for x0, y0, x1, y1 in b.astype(int):
                region = car[y0:y1, x0:x1]
                # the visible extent: car pixels on each of the box's four edges
                assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
                covered[y0:y1, x0:x1] = True
            assert not (car & ~covered).any()  # every visible car is annotated
            assert set(r.iscrowd.tolist()) <= {0, 1} and len(r.iscrowd) == len(b) == len(r.object_ids)
    assert n_boxes >= 3 * N_SCENES
    for rec in recs:
        assert all(a["category_id"] == 0 for a in rec["annotations"])


def test_distractors_are_drawn_and_never_annotated():
    seen = {k: 0 for k in ("person", "bus", "roadside")}
    for seed in _seeds(30):
        r = R.render_sim2real(seed, SCENE, R.SIM_STYLE)
        covered = np.zeros(r.labels.shape, bool)
        for x0, y0, x1, y1 in r.boxes.astype(int):
            covered[y0:y1, x0:x1] = True
        for k in seen:
            px = r.labels == R.LABELS.index(k)
            # drawn, and (outside boxes of cars standing in front of it) in no box: not a labelled object
            seen[k] += int((px & ~covered).sum() > 0)
        assert len(r.boxes) == len(np.unique(r.object_ids))  # one box per car
    assert all(n >= 3 for n in seen.values()), seen


def test_a_mostly_hidden_car_is_a_crowd_region():
    crowd = {0.0: 0, SCENE.min_visible: 0, 1.0: 0}
    cut = 0  # cars whose visible box is clearly smaller than their whole box (in the image): occluded
    for seed in _seeds(40, stream=2):
        by_rule = {m: R.render_sim2real(seed, dataclasses.replace(SCENE, min_visible=m), REAL.only("layout"))
                   for m in crowd}
        r = by_rule[SCENE.min_visible]
        for m, rm in by_rule.items():
            np.testing.assert_array_equal(rm.boxes, r.boxes)  # the rule only flags, it moves nothing
            crowd[m] += int(rm.iscrowd.sum())
        for box, full, c, c_all in zip(r.boxes, r.full_boxes, r.iscrowd, by_rule[1.0].iscrowd):
            visible = (box[2] - box[0]) * (box[3] - box[1])
            whole = (min(full[2], SCENE.width) - max(full[0], 0)) * (min(full[3], SCENE.height) - max(full[1], 0))
            if visible > 0.8 * whole:
                assert c == 0  # a box nearly as large as the car's whole box is not mostly hidden
            if visible < 0.9 * whole:
                cut += 1
                assert c_all == 1  # min_visible 1: any occluded car is a crowd region
    assert crowd[0.0] == 0 and crowd[SCENE.min_visible] <= crowd[1.0] and crowd[1.0] >= cut > 10, (crowd, cut)


# ---------------------------------------------------------------------------------------------------------
# the parts: each changes what it should and nothing else


def _render_pair(seed, part):
    return R.render_sim2real(seed, SCENE, R.SIM_STYLE), R.render_sim2real(seed, SCENE, REAL.only(part))


def _sky_rows_flat(r):
    sky = r.labels == R.LABELS.index("sky")
    img = r.image.astype(int)
    return all(np.ptp(img[y][sky[y]], axis=0).max() == 0 for y in range(img.shape[0]) if sky[y].sum() > 1)


def test_sensor_alone_is_the_documented_pipeline_of_the_sim_image():
    for seed in _seeds():
        sim, real = _render_pair(seed, "sensor")
        assert _sky_rows_flat(sim)  # sensor off: no noise, a flat region is flat
        assert not _sky_rows_flat(real)
        np.testing.assert_array_equal(real.image, R.apply_sensor(sim.image, REAL, R.stream_seed(seed, "sensor")))
        np.testing.assert_array_equal(real.boxes, sim.boxes)
        np.testing.assert_array_equal(real.labels, sim.labels)
    # each step: blur spreads a step edge, vignetting darkens corners, noise, JPEG (quality drawn per image)
    img = np.full((64, 64, 3), 128, np.uint8)
    img[:, 32:] = 200
    step = dataclasses.replace(REAL, vignetting=0.0, noise_sigma=0.0, jpeg_quality=(100, 100))
    out = R.apply_sensor(img, step, 0).astype(int)
    assert 128 + 5 < out[32, 31, 0] < out[32, 32, 0] < 200 - 5
    vign = R.apply_sensor(np.full((64, 64, 3), 200, np.uint8),
                          dataclasses.replace(step, blur_sigma=0.0, vignetting=0.5), 0).astype(int)
    assert vign[0, 0, 0] < 0.6 * 200 and vign[32, 32, 0] >= 198


def test_texture_alone_textures_surfaces_and_keeps_the_geometry():
    rough = {"sim": [], "texture": []}
    for seed in _seeds():
        sim, tex = _render_pair(seed, "texture")
        np.testing.assert_array_equal(tex.boxes, sim.boxes)
        np.testing.assert_array_equal(tex.labels, sim.labels)
        assert (tex.horizon, tex.focal_px, tex.camera_height) == (sim.horizon, sim.focal_px, sim.camera_height)
        ground = cv2.erode((sim.labels == R.LABELS.index("ground")).astype(np.uint8), np.ones((5, 5))) > 0
        for name, r in (("sim", sim), ("texture", tex)):
            lap = np.abs(cv2.Laplacian(r.image[..., 1].astype(np.float32), cv2.CV_32F))
            rough[name].append(float(lap[ground].mean()))
    # the sim road is flat (only its painted lines have edges); the textured one is rough everywhere
    assert np.mean(rough["texture"]) > 4 * np.mean(rough["sim"]) + 2, rough


def test_camera_alone_moves_the_horizon_and_scales_objects():
    ratios = []
    for seed in _seeds():
        sim, cam = _render_pair(seed, "camera")
        h = SCENE.height
        assert SCENE.horizon[0] * h <= sim.horizon <= SCENE.horizon[1] * h
        assert REAL.horizon[0] * h <= cam.horizon <= REAL.horizon[1] * h
        assert REAL.focal_px[0] <= cam.focal_px <= REAL.focal_px[1] and sim.focal_px == SCENE.focal_px
        assert REAL.camera_height[0] <= cam.camera_height <= REAL.camera_height[1]
        for r in (sim, cam):  # sky above the horizon row, ground below it
            sky_rows = np.nonzero((r.labels == R.LABELS.index("sky")).any(axis=1))[0]
            ground_rows = np.nonzero((r.labels == R.LABELS.index("ground")).any(axis=1))[0]
            # a ground row is labelled sky when it lies beyond SKY_DEPTH: within f * h / SKY_DEPTH px of the horizon
            far = max(0.5, r.focal_px * r.camera_height / R.SKY_DEPTH)
            assert sky_rows.max() + 0.5 - r.horizon <= far and r.horizon <= ground_rows.min()
            assert ground_rows.min() + 0.5 - r.horizon > far
        assert cam.horizon > sim.horizon + 4  # lower in the image
        # the same objects (same depth, same size in metres) are focal-ratio times larger
        same = {i: b for i, b in zip(sim.object_ids.tolist(), sim.full_boxes)}
        for i, b in zip(cam.object_ids.tolist(), cam.full_boxes):
            if i in same:
                ratio = (b[3] - b[1]) / (same[i][3] - same[i][1])
                assert ratio == pytest.approx(cam.focal_px / sim.focal_px, rel=1e-4)
                ratios.append(ratio)
    assert len(ratios) >= N_SCENES


def _background_equal(a, b):
    """Pixels that show the background (sky, ground, buildings) in both images and are far from any object."""
    objects = np.isin(a.labels, [4, 5, 6]) | np.isin(b.labels, [4, 5, 6])
    near = cv2.dilate(objects.astype(np.uint8), np.ones((3, 3))) > 0
    keep = ~near & (a.labels == b.labels)
    return keep, np.array_equal(a.image[keep], b.image[keep])


def test_shapes_alone_changes_the_cars_only():
    changed = 0
    body_ratios = {round(hm / 1.5, 4) for hm in (1.5, 1.45, 1.75, 2.0)}
    for seed in _seeds():
        sim, shp = _render_pair(seed, "shapes")
        assert (shp.horizon, shp.focal_px) == (sim.horizon, sim.focal_px)
        keep, equal = _background_equal(sim, shp)
        assert keep.mean() > 0.3 and equal
        same = {i: b for i, b in zip(sim.object_ids.tolist(), sim.full_boxes)}
        for i, b in zip(shp.object_ids.tolist(), shp.full_boxes):
            if i in same:  # same depth and position, the body's own height
                ratio = round(float((b[3] - b[1]) / (same[i][3] - same[i][1])), 4)
                assert ratio in body_ratios
                changed += ratio != 1.0
        sim_cars = sim.image[sim.labels == R.LABELS.index("car")]
        shp_cars = shp.image[shp.labels == R.LABELS.index("car")]
        if len(sim_cars) and len(shp_cars):
            assert not np.array_equal(np.unique(sim_cars, axis=0), np.unique(shp_cars, axis=0))
    assert changed >= 3


def test_layout_alone_adds_cars_lanes_and_occlusion():
    n = {"sim": 0, "layout": 0}
    marking = {"sim": 0, "layout": 0}
    occluded = {"sim": 0, "layout": 0}
    for seed in _seeds(20):
        sim, lay = _render_pair(seed, "layout")
        assert (lay.horizon, lay.focal_px, lay.camera_height) == (sim.horizon, sim.focal_px, sim.camera_height)
        sky = (sim.labels == 0) & (lay.labels == 0)
        np.testing.assert_array_equal(lay.image[sky], sim.image[sky])  # the sky (and camera) untouched
        for name, r in (("sim", sim), ("layout", lay)):
            n[name] += len(r.boxes)
            ground = r.labels == R.LABELS.index("ground")
            marking[name] += int((ground & np.all(r.image >= 215, axis=2)).sum())
            for box, full in zip(r.boxes, r.full_boxes):
                clipped = [max(full[0], 0), max(full[1], 0), min(full[2], SCENE.width), min(full[3], SCENE.height)]
                occluded[name] += int((box[2] - box[0]) * (box[3] - box[1]) <
                                      0.9 * (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]))
        assert set(lay.object_ids[lay.object_ids < 1000].tolist()) <= set(range(SCENE.objects[1]))
    assert n["layout"] >= 1.5 * n["sim"], n
    assert marking["layout"] > 1.5 * marking["sim"], marking
    assert occluded["layout"] > occluded["sim"], occluded


def test_the_real_style_is_every_part_together():
    for seed in _seeds(4):
        real = R.render_sim2real(seed, SCENE, REAL)
        cam = R.render_sim2real(seed, SCENE, REAL.only("camera"))
        assert (real.horizon, real.focal_px) == (cam.horizon, cam.focal_px)
        # without the sensor, the sensor's pipeline of that image gives the real image
        no_sensor = R.render_sim2real(seed, SCENE, dataclasses.replace(REAL, sensor=False))
        np.testing.assert_array_equal(real.image, R.apply_sensor(no_sensor.image, REAL, R.stream_seed(seed, "sensor")))
        np.testing.assert_array_equal(real.boxes, no_sensor.boxes)


# ---------------------------------------------------------------------------------------------------------
# registered names, bad input, the picture


def test_registered_names_generate_one_variant_lazily(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "DEFAULT_SIM2REAL_PARAMS", TINY)
    builtin.register_all_builtin(str(tmp_path), overwrite=True)
    try:
        assert not os.path.exists(tmp_path / "sim2real_pair")  # registering generated nothing
        sensor_val = DatasetCatalog.get("sim2real_sensor_real_val")
        assert sorted(os.listdir(tmp_path / "sim2real_pair")) == ["real_sensor"]  # only the variant used
        sim_val = DatasetCatalog.get("sim2real_sim_val")
        # the sensor changes pixels only: the same scenes, the same boxes
        assert [r["annotations"] for r in sim_val] == [r["annotations"] for r in sensor_val]
        assert [open(r["file_name"], "rb").read() for r in sim_val] != \
            [open(r["file_name"], "rb").read() for r in sensor_val]
        sizes = {"train": 3, "val": 2, "dev": 2, "test": 2}
        expected_names = {f"sim2real_sim_{s}" for s in ("train", "val", "test")}
        expected_names |= {f"sim2real_{v}_{s}" for v in ("real",) + tuple(f"{p}_real" for p in R.PARTS)
                           for s in sizes}
        assert set(builtin.SIM2REAL_SPLITS) == expected_names
        for name, (domain, part, split) in builtin.SIM2REAL_SPLITS.items():
            assert len(DatasetCatalog.get(name)) == sizes[split], name
            md = MetadataCatalog.get(name)
            assert md.thing_classes == ["car"] and md.evaluator_type == "coco" and md.split == split
            assert md.dataset_root == S.sim2real_dir(str(tmp_path), S.variant_name(domain, part))
            assert md.parts == ([] if domain == "sim" else [part] if part else list(R.PARTS))
        files = {s: {open(r["file_name"], "rb").read() for r in DatasetCatalog.get(f"sim2real_real_{s}")}
                 for s in sizes}
        for a in sizes:  # train, val, dev and test scenes are all different
            for b in sizes:
                assert a == b or not files[a] & files[b], (a, b)
    finally:
        builtin.register_all_builtin(overwrite=True)


@pytest.mark.parametrize("make, message", [
    (lambda: REAL.only("fog"), "sim2real: no part 'fog'; expected one of texture, shapes, camera, layout, sensor"),
    (lambda: S.load_sim2real("/nonexistent", "real", "val", part="blur"), "sim2real: no part 'blur'"),
    (lambda: S.load_sim2real("/nonexistent", "sim", "dev"),
     "sim2real pair: no split sim/dev; expected one of sim/train, sim/val, sim/test"),
    (lambda: S.load_sim2real("/nonexistent", "sim", "val", part="camera"), "part 'camera' given for the sim domain"),
    (lambda: S.sim2real_dir("/nonexistent", "real_fog"), "sim2real: no variant 'real_fog'"),
    (lambda: R.RealStyle(noise_sigma=-1.0), r"RealStyle.noise_sigma: expected a number in \[0.0, 64.0\], got -1.0"),
    (lambda: R.RealStyle(jpeg_quality=(0, 50)), r"RealStyle.jpeg_quality: expected two integers lo <= hi within "
                                                r"\[1, 100\], got \(0, 50\)"),
    (lambda: R.RealStyle(texture="yes"), "RealStyle.texture: expected True or False, got 'yes'"),
    (lambda: R.RealStyle(focal_px=(300.0, 200.0)), "RealStyle.focal_px: expected two numbers lo <= hi"),
    (lambda: R.SimScene(class_weights=(1.0,)), "SimScene.class_weights: expected three weights"),
    (lambda: R.SimScene(max_depth=3.0), r"SimScene.max_depth: expected >= min_depth \(6.0\), got 3.0"),
    (lambda: dataclasses.replace(TINY, n_dev=-1), "Sim2RealParams.n_dev: expected an integer >= 0, got -1"),
    (lambda: dataclasses.replace(TINY, real=R.SimScene()), "Sim2RealParams.real: expected a RealStyle"),
])
def test_bad_part_or_parameter_is_one_clear_error(make, message):
    with pytest.raises(ValueError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


def test_preview_rows_are_the_styles():
    grid = S.preview_grid(TINY, n_images=1, label_width=40)
    h, w = SCENE.height, SCENE.width
    assert grid.shape == (7 * h, 40 + w, 3) and grid.dtype == np.uint8
    rows = [grid[k * h:(k + 1) * h, 40:] for k in range(7)]
    seed = S.scene_seed(TINY, "real", "test", 0)
    np.testing.assert_array_equal(rows[0], R.render_sim2real(seed, SCENE, R.SIM_STYLE).image)
    np.testing.assert_array_equal(rows[1], R.render_sim2real(seed, SCENE, REAL).image)
    for k, part in enumerate(R.PARTS, start=2):
        np.testing.assert_array_equal(rows[k], R.render_sim2real(seed, SCENE, REAL.only(part)).image)
    assert (grid[:, :40] < 128).any()  # the row names


def test_the_committed_picture_is_small_and_complete():
    path = os.path.join(REPO, "docs", "sim2real_pair.png")
    assert os.path.getsize(path) < 300 * 1024
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    assert img.shape[0] == 7 * SCENE.height and (img.shape[1] - 64) % SCENE.width == 0
