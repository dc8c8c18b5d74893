"""The renderer of the embedded demo pair: seeded street-like scenes (clear) and the target shift (fog).

Pure numpy + OpenCV, no file access: :func:`render_scene` draws one clear scene from a seed,
:func:`apply_target_shift` turns a clear image into a target-domain one. The pair on disk (generation, stamp,
loading) is :mod:`metaalign_det.data.datasets.synthetic`. The sim -> real pair (:mod:`.sim2real_render`)
reuses the background, distractors, object drawing and rasterisation; the parameters they take for it
(camera height, road width, roadside offsets, ground grain, anti-aliasing) default to what this pair uses,
so its images do not change (they are the committed study's data: ``GENERATOR_VERSION`` stays).

Scene model (all lengths in metres, one pinhole camera ``CAMERA_HEIGHT`` above a flat ground plane):

* a ground pixel in row ``y`` below the horizon row ``y_h`` is at depth ``f * CAMERA_HEIGHT / (y - y_h)``
  (``f`` = ``focal_px``), so objects higher in the image are farther *and* smaller
  (pixel size = ``f * size_m / depth``);
* sky is at ``SKY_DEPTH`` (fog turns it fully into airlight, as in Foggy Cityscapes), buildings stand on the
  ground 45-110 m away, poles and trees (distractors, not labelled) at the roadside;
* objects (``SYNTHETIC_CLASSES``) stand on the ground at ``min_depth``..``max_depth`` (log-uniform, so near
  and far are both common), drawn far-to-near so near ones occlude; boxes are the visible extent of each
  object's instance mask (``x2 = max_x + 1``), as for Cityscapes.

The target domain is made from the *same kind* of scene (other seeds for train, the very same scenes for
val) by :func:`apply_target_shift`, which is the whole difference between the domains:

1. fog, the optical model of Foggy Cityscapes (Sakaridis et al., IJCV 2018): ``I_fog = I * t + A * (1 - t)``
   with transmittance ``t = exp(-beta * depth)`` and airlight ``A`` (per image, ``airlight`` ±
   ``airlight_jitter``, slightly blue);
2. a colour cast (per-channel gains ``cast_rgb``), as from a different camera / white balance;
3. Gaussian blur ``blur_sigma`` px (scattering, defocus);
4. Gaussian sensor noise ``noise_sigma`` (8-bit levels).
"""
from dataclasses import dataclass
from typing import Sequence, Union

import cv2
import numpy as np

__all__ = [
    "SYNTHETIC_CLASSES",
    "GENERATOR_VERSION",
    "SceneParams",
    "TargetShift",
    "Scene",
    "render_scene",
    "apply_target_shift",
]

SYNTHETIC_CLASSES = ("car", "person", "bus")
# Bump when the rendering code changes in a way that changes pixels: the stamp then forces regeneration.
GENERATOR_VERSION = 2  # 2: target dev split and clear/foggy test splits

CAMERA_HEIGHT = 1.5  # m
SKY_DEPTH = 600.0  # m; exp(-beta * 600) ~ 0: the sky becomes airlight
DEPTH_SCALE = 100.0  # depth PNGs store centimetres
_MAX_DEPTH_CM = 65535

# object sizes (width, height) in metres: side and rear views
_SIZES = {
    "car": ((4.2, 1.5), (1.8, 1.5)),
    "person": ((0.6, 1.75), (0.6, 1.75)),
    "bus": ((11.0, 3.2), (2.6, 3.2)),
}
_CLASS_WEIGHTS = {"car": 0.5, "person": 0.3, "bus": 0.2}

_CAR_COLOURS = np.array(
    [[200, 30, 30], [30, 60, 170], [230, 230, 230], [25, 25, 25], [150, 150, 160], [40, 120, 60],
     [220, 180, 40], [120, 70, 30]], np.float32)
_BUS_COLOURS = np.array([[235, 190, 20], [200, 40, 40], [40, 90, 190], [240, 240, 235], [50, 140, 80]],
                        np.float32)
_SHIRT_COLOURS = np.array(
    [[200, 40, 40], [40, 60, 160], [230, 230, 230], [30, 30, 30], [60, 150, 70], [230, 150, 30],
     [150, 60, 150]], np.float32)
_SKIN = np.array([[230, 190, 160], [180, 130, 100], [120, 80, 55]], np.float32)
_BUILDING_COLOURS = np.array(
    [[190, 170, 140], [150, 140, 130], [170, 110, 90], [200, 200, 195], [120, 110, 100], [210, 190, 150]],
    np.float32)


@dataclass(frozen=True)
class SceneParams:
    """Geometry and content of one scene."""

    height: int = 128  # image size in pixels
    width: int = 256
    focal_px: float = 200.0  # pinhole focal length in pixels
    horizon: tuple = (0.34, 0.44)  # horizon row range, as a fraction of the height
    objects: tuple = (2, 7)  # objects per scene, inclusive range (rejected placements are not retried)
    min_depth: float = 6.0  # m, nearest object
    max_depth: float = 42.0  # m, farthest object
    min_box_px: int = 8  # objects whose full box is shorter than this are not placed
    max_overlap: float = 0.35  # a placement covering more than this of an earlier box (or vice versa) is dropped
    distractors: tuple = (1, 5)  # unlabelled poles / trees per scene
    clear_noise_sigma: float = 2.0  # sensor noise of the clear camera (8-bit levels)


@dataclass(frozen=True)
class TargetShift:
    """Everything that turns a clear image into a target-domain one (see the module docstring)."""

    beta: float = 0.035  # fog attenuation 1/m (meteorological visibility 3/beta = 86 m)
    airlight: float = 0.82  # airlight level (fraction of 255)
    airlight_jitter: float = 0.05  # uniform per-image jitter of the airlight level
    airlight_tint: tuple = (0.96, 1.0, 1.05)  # RGB tint of the airlight (bluish fog)
    cast_rgb: tuple = (0.92, 0.97, 1.06)  # per-channel gains after fog: a cool colour cast
    blur_sigma: float = 0.7  # px
    noise_sigma: float = 5.0  # 8-bit levels


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8, RGB
    depth_cm: np.ndarray  # HxW uint16, centimetres, saturated at 65535
    boxes: np.ndarray  # Nx4 float32 XYXY_ABS (visible extent, x2 = max_x + 1)
    classes: np.ndarray  # N int64, indices into SYNTHETIC_CLASSES


# ---------------------------------------------------------------------------------------------------------
# rendering


def _vertical_shade(img, inst, oid, y0, y1, x0, x1, top=1.12, bottom=0.78):
    """Darken an object's pixels towards its bottom (a cheap overhead-light shading)."""
    y0, y1 = max(y0, 0), min(y1, img.shape[0])
    x0, x1 = max(x0, 0), min(x1, img.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    crop = img[y0:y1, x0:x1]
    m = inst[y0:y1, x0:x1] == oid
    g = np.linspace(top, bottom, y1 - y0, dtype=np.float32)[:, None, None]
    crop[:] = np.where(m[..., None], crop * g, crop)


def _draw_car(img, inst, oid, box, side, colour):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    body_top = y0 + 0.42 * h
    wheel_r = max(1.0, 0.2 * h)
    shapes = []
    if side:
        cabin = np.array([[x0 + 0.22 * w, body_top], [x0 + 0.32 * w, y0], [x1 - 0.28 * w, y0],
                          [x1 - 0.12 * w, body_top]])
        window = np.array([[x0 + 0.28 * w, body_top - 0.05 * h], [x0 + 0.35 * w, y0 + 0.12 * h],
                           [x1 - 0.31 * w, y0 + 0.12 * h], [x1 - 0.18 * w, body_top - 0.05 * h]])
    else:
        cabin = np.array([[x0 + 0.06 * w, body_top], [x0 + 0.16 * w, y0], [x1 - 0.16 * w, y0],
                          [x1 - 0.06 * w, body_top]])
        window = np.array([[x0 + 0.14 * w, body_top - 0.06 * h], [x0 + 0.2 * w, y0 + 0.12 * h],
                           [x1 - 0.2 * w, y0 + 0.12 * h], [x1 - 0.14 * w, body_top - 0.06 * h]])
    shapes.append(("poly", cabin, colour * 0.9))
    shapes.append(("rect", (x0, body_top, x1, y1 - 0.12 * h), colour))
    shapes.append(("poly", window, np.array([60, 75, 95], np.float32)))
    if side:
        for cx in (x0 + 0.2 * w, x1 - 0.2 * w):
            shapes.append(("circle", (cx, y1 - wheel_r, wheel_r), np.array([20, 20, 20], np.float32)))
    else:
        shapes.append(("rect", (x0 + 0.04 * w, y1 - 0.16 * h, x0 + 0.24 * w, y1), np.array([20, 20, 20], np.float32)))
        shapes.append(("rect", (x1 - 0.24 * w, y1 - 0.16 * h, x1 - 0.04 * w, y1), np.array([20, 20, 20], np.float32)))
        for lx in (x0 + 0.04 * w, x1 - 0.18 * w):
            shapes.append(("rect", (lx, body_top + 0.1 * h, lx + 0.14 * w, body_top + 0.22 * h),
                           np.array([220, 30, 30], np.float32)))
    return shapes


def _draw_bus(img, inst, oid, box, side, colour):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    dark = np.array([45, 55, 70], np.float32)
    shapes = [("rect", (x0, y0, x1, y1 - 0.08 * h), colour)]
    if side:
        shapes.append(("rect", (x0 + 0.03 * w, y0 + 0.15 * h, x1 - 0.03 * w, y0 + 0.45 * h), dark))
        shapes.append(("rect", (x0 + 0.02 * w, y0 + 0.5 * h, x0 + 0.08 * w, y1 - 0.15 * h), dark))  # door
        r = max(1.0, 0.13 * h)
        for cx in (x0 + 0.15 * w, x1 - 0.15 * w):
            shapes.append(("circle", (cx, y1 - r, r), np.array([20, 20, 20], np.float32)))
    else:
        shapes.append(("rect", (x0 + 0.08 * w, y0 + 0.12 * h, x1 - 0.08 * w, y0 + 0.5 * h), dark))
        shapes.append(("rect", (x0 + 0.05 * w, y1 - 0.1 * h, x0 + 0.25 * w, y1), np.array([20, 20, 20], np.float32)))
        shapes.append(("rect", (x1 - 0.25 * w, y1 - 0.1 * h, x1 - 0.05 * w, y1), np.array([20, 20, 20], np.float32)))
    return shapes


def _draw_person(img, inst, oid, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    shirt = _SHIRT_COLOURS[rng.integers(len(_SHIRT_COLOURS))]
    trousers = _SHIRT_COLOURS[rng.integers(len(_SHIRT_COLOURS))] * 0.6
    skin = _SKIN[rng.integers(len(_SKIN))]
    head_r = max(1.0, 0.09 * h)
    cx = 0.5 * (x0 + x1)
    return [
        ("rect", (x0 + 0.08 * w, y0 + 0.52 * h, cx - 0.04 * w, y1), trousers),
        ("rect", (cx + 0.04 * w, y0 + 0.52 * h, x1 - 0.08 * w, y1), trousers),
        ("rect", (x0, y0 + 0.17 * h, x1, y0 + 0.55 * h), shirt),
        ("circle", (cx, y0 + head_r, head_r), skin),
    ]


def _rasterise(img, inst, oid, shapes, antialias=False):
    """Draw shapes (sub-pixel coordinates, 4 fractional bits) into the image and the instance map.

    ``shapes``: ``(kind, geometry, RGB colour)`` with kind ``rect`` (x0, y0, x1, y1), ``poly`` (Nx2 points of a
    convex polygon) or ``circle`` (cx, cy, r), in pixels. ``antialias``: blend each shape into ``img`` by its
    pixel coverage (OpenCV draws anti-aliased only into 8-bit images, hence the uint8 coverage mask); the
    instance map always gets hard (8-connected) edges, so boxes do not depend on it.
    """
    s = 16.0
    for kind, geom, colour in shapes:
        col = tuple(float(c) for c in colour)
        if kind == "rect":
            x0, y0, x1, y1 = geom
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            kind, geom = "poly", pts
        if kind == "poly":
            pts = np.round((np.asarray(geom) - 0.5) * s).astype(np.int32)
            if antialias:
                cover = np.zeros(img.shape[:2], np.uint8)
                cv2.fillConvexPoly(cover, pts, 255, lineType=cv2.LINE_AA, shift=4)
                _blend(img, cover, col)
            else:
                cv2.fillConvexPoly(img, pts, col, lineType=cv2.LINE_8, shift=4)
            cv2.fillConvexPoly(inst, pts, oid, lineType=cv2.LINE_8, shift=4)
        else:
            cx, cy, r = geom
            c = (int(round((cx - 0.5) * s)), int(round((cy - 0.5) * s)))
            if antialias:
                cover = np.zeros(img.shape[:2], np.uint8)
                cv2.circle(cover, c, int(round(r * s)), 255, -1, lineType=cv2.LINE_AA, shift=4)
                _blend(img, cover, col)
            else:
                cv2.circle(img, c, int(round(r * s)), col, -1, lineType=cv2.LINE_8, shift=4)
            cv2.circle(inst, c, int(round(r * s)), oid, -1, lineType=cv2.LINE_8, shift=4)


def _blend(img, cover, colour):
    """``img`` (HxWx3 float32) := colour where ``cover`` (HxW uint8, 255 = fully covered) is, blended at edges."""
    ys, xs = np.nonzero(cover)
    if len(ys) == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = cover[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - a) + np.asarray(colour, np.float32) * a


def _background(p, rng, horizon, vx, camera_height=CAMERA_HEIGHT, road_half_width=(5.5, 8.0), ground_noise=5.0):
    """Sky, ground (road, kerbside, centre line) and buildings: (HxWx3 float32 image, HxW depth in m,
    H depth of each ground row in m (``SKY_DEPTH`` above the horizon), road half width in m).

    ``camera_height`` (m) and ``road_half_width`` (m, the range it is drawn from) change values, not how many
    numbers are drawn from ``rng``; ``ground_noise`` (8-bit levels, 0: none and no draw) is the ground's grain.
    """
    h, w = p.height, p.width
    img = np.empty((h, w, 3), np.float32)
    depth = np.full((h, w), SKY_DEPTH, np.float32)
    rows = np.arange(h, dtype=np.float32) + 0.5
    dy = rows - horizon
    ground_rows = dy > 0.5
    row_depth = np.where(ground_rows, p.focal_px * camera_height / np.maximum(dy, 0.5), SKY_DEPTH)

    # sky: vertical gradient from blue to pale near the horizon
    top = np.array([70, 130, 200], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    low = np.array([190, 210, 230], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    a = np.clip(rows / max(horizon, 1.0), 0, 1)[:, None, None]
    img[:] = top * (1 - a) + low * a

    # ground: road (asphalt) between the kerbs, pavement / grass outside, dashed centre line
    cols = np.arange(w, dtype=np.float32) + 0.5
    lateral = (cols[None, :] - vx) * row_depth[:, None] / p.focal_px  # metres from the road axis
    half_road = rng.uniform(*road_half_width)
    road_tone = rng.uniform(70, 110)
    road = np.array([road_tone, road_tone, road_tone + 4], np.float32)
    side = (np.array([160, 160, 155], np.float32) if rng.random() < 0.6
            else np.array([70, 130, 60], np.float32)) * rng.uniform(0.85, 1.1)
    g = ground_rows[:, None] & np.ones((1, w), bool)
    on_road = g & (np.abs(lateral) < half_road)
    img[g & ~on_road] = side
    img[on_road] = road
    if ground_noise > 0:
        tex = rng.normal(0, ground_noise, (h, w)).astype(np.float32)
        img[g] += tex[g][:, None]
    dash = on_road & (np.abs(lateral) < 0.12) & ((row_depth[:, None] // 3.0) % 2 == 0)
    img[dash] = (230, 230, 220)
    depth[ground_rows] = row_depth[ground_rows, None]

    # buildings along the horizon, each a flat facade with a grid of darker windows
    x = -rng.uniform(0, 20)
    while x < w:
        bw = rng.uniform(18, 60)
        bd = rng.uniform(45, 110)
        base = horizon + p.focal_px * camera_height / bd
        top_y = horizon - rng.uniform(0.1, 0.4) * h
        x0, x1 = int(max(x, 0)), int(min(x + bw, w))
        y0, y1 = int(max(top_y, 0)), int(min(base, h))
        if x1 > x0 and y1 > y0:
            colour = _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))] * rng.uniform(0.8, 1.1)
            img[y0:y1, x0:x1] = colour
            depth[y0:y1, x0:x1] = bd
            step = max(3, int(rng.uniform(4, 7)))
            wy, wx = np.mgrid[y0:y1, x0:x1]
            win = ((wy - y0) % step >= 2) & ((wx - x0) % step >= 2) & (wy < y1 - 2)
            img[y0:y1, x0:x1][win] = colour * 0.55
        x += bw + rng.uniform(0, 6)
    return img, depth, row_depth, half_road


def _distractors(img, depth, p, rng, horizon, vx, camera_height=CAMERA_HEIGHT, lateral=(7, 11)):
    """Poles and trees at the roadside: vertical structures that are not objects.

    ``p.distractors`` of them (inclusive range), ``lateral`` m (range) left or right of the road axis, at
    ``p.min_depth`` .. 1.5 ``p.max_depth`` m; painted into ``img`` (HxWx3 float32) and ``depth`` (HxW, m).
    """
    h, w = p.height, p.width
    for _ in range(int(rng.integers(p.distractors[0], p.distractors[1] + 1))):
        d = float(np.exp(rng.uniform(np.log(p.min_depth), np.log(p.max_depth * 1.5))))
        lat = rng.choice([-1, 1]) * rng.uniform(*lateral)
        cx = vx + p.focal_px * lat / d
        base = horizon + p.focal_px * camera_height / d
        mask = np.zeros((h, w), np.uint8)
        if rng.random() < 0.5:  # pole
            ph = p.focal_px * rng.uniform(4, 7) / d
            pw = max(1.0, p.focal_px * 0.2 / d)
            cv2.rectangle(mask, (int(cx - pw / 2), int(base - ph)), (int(cx + pw / 2), int(base)), 1, -1)
            colour = np.array([60, 60, 65], np.float32)
            img[mask > 0] = colour
        else:  # tree: trunk + crown
            th = p.focal_px * rng.uniform(4, 6) / d
            tw = max(1.0, p.focal_px * 0.35 / d)
            cv2.rectangle(mask, (int(cx - tw / 2), int(base - th * 0.5)), (int(cx + tw / 2), int(base)), 1, -1)
            img[mask > 0] = (90, 60, 35)
            crown = np.zeros((h, w), np.uint8)
            cv2.circle(crown, (int(cx), int(base - th * 0.7)), max(1, int(th * 0.3)), 1, -1)
            img[crown > 0] = np.array([40, 110, 45], np.float32) * rng.uniform(0.7, 1.1)
            mask |= crown
        depth[mask > 0] = d


def _overlaps(box, area, others, max_overlap):
    """Whether ``box`` (XYXY px, ``area`` px²) covers more than ``max_overlap`` of one of ``others``' areas, or
    one of them more than that of its own (the placement rule that bounds occlusion)."""
    for b2 in others:
        ix = max(0.0, min(box[2], b2[2]) - max(box[0], b2[0]))
        iy = max(0.0, min(box[3], b2[3]) - max(box[1], b2[1]))
        inter = ix * iy
        if inter > max_overlap * area or inter > max_overlap * (b2[2] - b2[0]) * (b2[3] - b2[1]):
            return True
    return False


def render_scene(seed: Union[int, Sequence[int]], scene_params: SceneParams = SceneParams()) -> Scene:
    """Render one clear scene from a seed (any numpy ``SeedSequence`` entropy): image, depth, boxes."""
    p = scene_params
    rng = np.random.default_rng(seed)
    h, w = p.height, p.width
    horizon = float(rng.uniform(*p.horizon) * h)
    vx = float(w * rng.uniform(0.4, 0.6))  # vanishing point column
    img, depth, _, _ = _background(p, rng, horizon, vx)
    _distractors(img, depth, p, rng, horizon, vx)

    # sample objects: position on the ground, size from depth; drop those too small or too occluded
    names = list(_CLASS_WEIGHTS)
    weights = np.array([_CLASS_WEIGHTS[n] for n in names])
    placed = []  # (depth, cls, box, side)
    n_obj = int(rng.integers(p.objects[0], p.objects[1] + 1))
    for _ in range(n_obj):
        cls = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        d = float(np.exp(rng.uniform(np.log(p.min_depth), np.log(p.max_depth))))
        side = bool(rng.random() < 0.5)
        wm, hm = _SIZES[cls][0 if side else 1]
        scale = rng.uniform(0.9, 1.1)
        lat = rng.uniform(-5.5, 5.5) if cls != "person" else rng.choice([-1, 1]) * rng.uniform(3.0, 8.0)
        bw, bh = p.focal_px * wm * scale / d, p.focal_px * hm * scale / d
        cx = vx + p.focal_px * lat / d
        y1 = horizon + p.focal_px * CAMERA_HEIGHT / d
        box = np.array([cx - bw / 2, y1 - bh, cx + bw / 2, y1])
        if bh < p.min_box_px or box[0] < -0.3 * bw or box[2] > w + 0.3 * bw or box[3] > h + 0.5:
            continue
        if not _overlaps(box, bw * bh, [b2 for _, _, b2, _ in placed], p.max_overlap):
            placed.append((d, cls, box, side))

    # paint far to near into the image and an instance map
    inst = np.zeros((h, w), np.int32)
    placed.sort(key=lambda t: -t[0])
    for k, (d, cls, box, side) in enumerate(placed, start=1):
        if cls == "car":
            shapes = _draw_car(img, inst, k, box, side, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
                               * rng.uniform(0.85, 1.1))
        elif cls == "bus":
            shapes = _draw_bus(img, inst, k, box, side, _BUS_COLOURS[rng.integers(len(_BUS_COLOURS))])
        else:
            shapes = _draw_person(img, inst, k, box, rng)
        _rasterise(img, inst, k, shapes)
        _vertical_shade(img, inst, k, int(box[1]), int(np.ceil(box[3])) + 1, int(box[0]), int(np.ceil(box[2])) + 1)
        depth[inst == k] = d

    # global illumination and the clear camera's own noise
    img *= rng.uniform(0.85, 1.12)
    img += rng.normal(0, p.clear_noise_sigma, img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    depth_cm = np.clip(np.round(depth * DEPTH_SCALE), 0, _MAX_DEPTH_CM).astype(np.uint16)

    # boxes from the visible pixels of each instance
    boxes, classes = [], []
    for k, (d, cls, box, side) in enumerate(placed, start=1):
        ys, xs = np.nonzero(inst == k)
        if len(ys) == 0:
            continue
        # every painted object is labelled (placement already bounded occlusion), so no object pixels
        # are ever unlabelled background
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        classes.append(SYNTHETIC_CLASSES.index(cls))
    return Scene(image=image, depth_cm=depth_cm, boxes=np.array(boxes, np.float32).reshape(-1, 4),
                 classes=np.array(classes, np.int64))


def apply_target_shift(
    image: np.ndarray, depth_cm: np.ndarray, shift: TargetShift, seed: Union[int, Sequence[int]]
) -> np.ndarray:
    """The documented clear -> target model (module docstring): fog, colour cast, blur, noise.

    ``image``: HxWx3 uint8 RGB; ``depth_cm``: HxW uint16 (as stored); ``seed``: entropy for the per-image
    draws (airlight jitter, noise). Returns HxWx3 uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    x = image.astype(np.float32) / 255.0
    t = np.exp(-shift.beta * (depth_cm.astype(np.float32) / DEPTH_SCALE))[..., None]
    a_level = shift.airlight + rng.uniform(-shift.airlight_jitter, shift.airlight_jitter)
    airlight = np.float32(a_level) * np.asarray(shift.airlight_tint, np.float32)
    x = x * t + airlight * (1.0 - t)
    x = x * np.asarray(shift.cast_rgb, np.float32)
    if shift.blur_sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), shift.blur_sigma, borderType=cv2.BORDER_REFLECT)
    x = x * 255.0 + rng.normal(0, shift.noise_sigma, x.shape).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
