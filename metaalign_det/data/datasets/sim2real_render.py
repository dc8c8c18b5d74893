"""The renderer of the sim -> real pair: street scenes with one labelled class (car), in a flat "sim" style
and in a "real" style made of five named parts, each an independent, seeded switch.

Pure numpy + OpenCV, no file access: :func:`render_sim2real` draws one image from a seed, a scene
(:class:`SimScene`) and a style (:class:`RealStyle`). The pair on disk (splits, stamp, loading) is
:mod:`metaalign_det.data.datasets.sim2real`.

Scene model: that of the demo pair (:mod:`.synthetic_render`, whose background, roadside distractors, object
drawing and rasterisation are reused here): a pinhole camera over a flat ground, a ground pixel in row ``y``
below the horizon row ``y_h`` at depth ``f * camera_height / (y - y_h)``; sky, buildings, a road; objects
standing on the ground, drawn far to near. Here:

* one labelled class, ``car``. Persons (on the pavements) and buses (on the road) are drawn like the cars but
  never annotated, and so are the roadside poles and trees: all four are unlabelled distractors;
* boxes are the visible extent of each car's instance mask (``x2 = max_x + 1``); a car of which less than
  ``SimScene.min_visible`` of its own pixels is visible (the rest hidden by nearer objects) is annotated
  ``iscrowd=1``, an ignore region (as Cityscapes crowds): neither a positive nor a false positive;
* the **sim** style: flat uniform colours, no shading, hard edges (no anti-aliasing), no noise, one camera
  (``SimScene.camera_height``, ``focal_px``);
* the **real** style (:class:`RealStyle`) is the sim style plus five parts, each a switch with its strengths
  (:data:`PARTS`): ``texture`` (surface texture and shading: textured road, buildings and car bodies, a
  directional lighting gradient, soft shadows under objects, anti-aliased edges), ``shapes`` (the car shape
  family: hatchback / sedan / SUV / van bodies with rounded silhouettes, a muted palette, either facing),
  ``camera`` (a lower camera with a longer lens: object scale, perspective, horizon row), ``layout`` (a wider
  multi-lane road, rows of parked cars, more traffic and pedestrians, more occlusion) and ``sensor`` (optical
  blur, vignetting, noise, JPEG compression).

Randomness: every image has a seed (any numpy ``SeedSequence`` entropy) and draws from one stream per
purpose (:data:`_STREAMS`): the scene's geometry (vanishing point, road, buildings, the base objects), the
camera, the roadside distractors, each object's appearance, and one stream per part. A part switched off
draws nothing; switching it on changes only values drawn from its own stream (the geometry stream draws as
many numbers whatever the style). So a style with one part on differs from the sim style by that part alone
(the tests check each part).
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from .synthetic_render import (
    _BUS_COLOURS,
    _CAR_COLOURS,
    _SIZES,
    SKY_DEPTH,
    SceneParams,
    _background,
    _distractors,
    _draw_bus,
    _draw_car,
    _draw_person,
    _overlaps,
    _rasterise,
    _vertical_shade,
)

__all__ = [
    "SIM2REAL_CLASSES",
    "SIM2REAL_GENERATOR_VERSION",
    "PARTS",
    "PART_FIELDS",
    "LABELS",
    "SimScene",
    "RealStyle",
    "SIM_STYLE",
    "Sim2RealImage",
    "render_sim2real",
    "apply_sensor",
    "stream_seed",
]

SIM2REAL_CLASSES = ("car",)
# Bump when the rendering code changes in a way that changes pixels: the stamps then force regeneration.
SIM2REAL_GENERATOR_VERSION = 1
PARTS = ("texture", "shapes", "camera", "layout", "sensor")
# the strengths of each part (RealStyle fields besides the switches): what a part's stamp records
PART_FIELDS = {
    "texture": ("texture_noise", "light_gradient", "shadow_strength"),
    "shapes": (),
    "camera": ("camera_height", "focal_px", "horizon"),
    "layout": ("road_half_width", "parked_rows", "parked_per_row", "extra_cars", "extra_persons",
               "extra_distractors", "layout_overlap"),
    "sensor": ("blur_sigma", "vignetting", "noise_sigma", "jpeg_quality"),
}
# what each pixel shows (Sim2RealImage.labels); "roadside" = poles and trees
LABELS = ("sky", "ground", "building", "roadside", "car", "person", "bus")
_OBJECT_CLASSES = ("car", "person", "bus")

# random streams of one image: seed entropy + (stream,) [+ sub-stream words]
_STREAMS = {"geometry": 0, "camera": 1, "roadside": 2, "object": 3, "texture": 4, "shapes": 5, "layout": 6,
            "sensor": 7}
_EXTRA = 1000  # object index of the layout part's extra objects: 1000 + j (base objects: 0 .. n-1)

# the real car family (shapes part): sizes (side view, rear view) as (width, height) in m; draw weight;
# body_top = where the lower body starts (fraction of the box height from the top); cabin = where the cabin
# meets the body and where its roof begins and ends, as fractions of the box width (side view, facing left)
_REAL_BODIES = {
    "hatchback": {"size": ((3.9, 1.5), (1.75, 1.5)), "weight": 0.3, "body_top": 0.46,
                  "cabin": (0.2, 0.36, 0.84, 0.97)},
    "sedan": {"size": ((4.7, 1.45), (1.85, 1.45)), "weight": 0.35, "body_top": 0.5,
              "cabin": (0.22, 0.37, 0.66, 0.82)},
    "suv": {"size": ((4.6, 1.75), (1.95, 1.75)), "weight": 0.25, "body_top": 0.45,
            "cabin": (0.15, 0.27, 0.9, 0.97)},
    "van": {"size": ((4.9, 2.0), (2.0, 2.0)), "weight": 0.1, "body_top": 0.42,
            "cabin": (0.04, 0.17, 0.97, 0.99)},
}
# muted, metallic-looking paints (the sim palette, _CAR_COLOURS, is saturated)
_REAL_CAR_COLOURS = np.array(
    [[178, 180, 184], [72, 74, 78], [226, 226, 222], [30, 30, 33], [38, 48, 82], [112, 28, 32],
     [186, 172, 146], [96, 110, 124], [44, 62, 52]], np.float32)
_GLASS = np.array([58, 70, 84], np.float32)
_TYRE = np.array([22, 22, 24], np.float32)
_RIM = np.array([150, 152, 156], np.float32)
_TAIL = np.array([170, 30, 28], np.float32)
_HEAD = np.array([235, 230, 200], np.float32)
_PLATE = np.array([232, 232, 222], np.float32)
_MARKING = (225, 225, 215)


# ---------------------------------------------------------------------------------------------------------
# parameters


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(owner, bounds):
    """One ValueError naming the first field of ``owner`` outside its bounds: ``{field: (kind, lo, hi)}`` with
    kind ``switch`` (a bool), ``num`` (a number in [lo, hi]), ``int``, ``range`` (two numbers lo <= a <= b <= hi)
    or ``irange`` (the same, integers)."""
    cls = type(owner).__name__
    for name, (kind, lo, hi) in bounds.items():
        v = getattr(owner, name)
        if kind == "switch":
            ok, want = isinstance(v, bool), "True or False"
        elif kind in ("num", "int"):
            ok = _is_number(v) and lo <= v <= hi and (kind == "num" or isinstance(v, int))
            want = f"{'an integer' if kind == 'int' else 'a number'} in [{lo}, {hi}]"
        else:
            ok = (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) for x in v)
                  and (kind == "range" or all(isinstance(x, int) for x in v)) and lo <= v[0] <= v[1] <= hi)
            want = f"two {'integers' if kind == 'irange' else 'numbers'} lo <= hi within [{lo}, {hi}]"
        if not ok:
            raise ValueError(f"{cls}.{name}: expected {want}, got {v!r}")


@dataclass(frozen=True)
class SimScene:
    """The scene and the sim style's camera: what every style draws (sizes in px, lengths in m)."""

    height: int = 128  # image size in pixels
    width: int = 256
    camera_height: float = 1.5  # m: the one sim camera (the camera part replaces it)
    focal_px: float = 200.0  # pinhole focal length in pixels (the camera part replaces it)
    horizon: tuple = (0.36, 0.42)  # horizon row range, fraction of the height (pitch jitter of the sim camera)
    road_half_width: tuple = (5.5, 8.0)  # m, drawn per image (the layout part replaces it)
    objects: tuple = (4, 10)  # ground objects per image (cars, persons, buses), inclusive; rejected ones not retried
    class_weights: tuple = (0.7, 0.15, 0.15)  # car, person, bus (persons and buses are unlabelled distractors)
    min_depth: float = 6.0  # m, nearest object
    max_depth: float = 40.0  # m, farthest object
    min_box_px: int = 10  # objects whose whole box is lower than this are not placed
    max_overlap: float = 0.35  # a placement covering more than this of an earlier box (or vice versa) is dropped
    distractors: tuple = (1, 4)  # roadside poles / trees per image
    min_visible: float = 0.25  # a car with less of its own pixels visible is annotated iscrowd=1 (ignored)

    def __post_init__(self):
        _check(self, {
            "height": ("int", 16, 4096), "width": ("int", 16, 4096), "camera_height": ("num", 0.2, 20.0),
            "focal_px": ("num", 10.0, 5000.0), "horizon": ("range", 0.0, 1.0), "road_half_width": ("range", 1.0, 40.0),
            "objects": ("irange", 0, 100), "min_depth": ("num", 0.5, 1000.0), "max_depth": ("num", 0.5, 1000.0),
            "min_box_px": ("int", 1, 4096), "max_overlap": ("num", 0.0, 1.0), "distractors": ("irange", 0, 100),
            "min_visible": ("num", 0.0, 1.0),
        })
        w = self.class_weights
        if not (isinstance(w, (tuple, list)) and len(w) == 3 and all(_is_number(x) and x >= 0 for x in w)
                and sum(w) > 0):
            raise ValueError(f"SimScene.class_weights: expected three weights >= 0 (car, person, bus) with a "
                             f"positive sum, got {w!r}")
        if self.max_depth < self.min_depth:
            raise ValueError(f"SimScene.max_depth: expected >= min_depth ({self.min_depth}), got {self.max_depth!r}")


@dataclass(frozen=True)
class RealStyle:
    """The sim -> real difference: five parts (:data:`PARTS`), each a switch with its strengths. The defaults
    are the real style (every part on); :meth:`only` gives one part alone, or the sim style (none)."""

    # texture: surface texture and shading
    texture: bool = True  # on: textured surfaces and car bodies, lighting gradient, soft shadows, anti-aliased edges
    texture_noise: float = 18.0  # 8-bit levels: std of the surface texture (coarse blotches + fine grain)
    light_gradient: float = 0.6  # peak-to-peak gain of the directional light across the image (0: none)
    shadow_strength: float = 0.7  # darkening at the centre of the soft shadow under each object (0..1)
    # shapes: the car shape family
    shapes: bool = True  # on: hatchback/sedan/SUV/van, rounded silhouettes, muted palette, either facing (sim: 1 sedan)
    # camera: camera height and focal length (object scale, perspective, horizon row)
    camera: bool = True  # on: the ranges below, drawn per image (sim: SimScene's one camera, 1.5 m, 200 px)
    camera_height: tuple = (0.9, 1.25)  # m: a lower camera, so ground rows are compressed towards the horizon
    focal_px: tuple = (280.0, 380.0)  # px: a longer lens, objects 1.4-1.9x larger than in sim, more of them cut
    horizon: tuple = (0.46, 0.54)  # horizon row range, fraction of the height (sim: 0.36..0.42)
    # layout: layout and density
    layout: bool = True  # on: wider multi-lane road, parked rows, more traffic/pedestrians/poles, more occlusion
    road_half_width: tuple = (8.0, 11.0)  # m (sim: 5.5..8): two lanes each way, dashed lane lines, parking lanes
    parked_rows: tuple = (1, 2)  # rows of parked cars along the kerbs per image (inclusive range)
    parked_per_row: tuple = (3, 7)  # cars per parked row
    extra_cars: tuple = (2, 5)  # extra cars in the lanes
    extra_persons: tuple = (1, 4)  # extra pedestrians on the pavements (unlabelled)
    extra_distractors: tuple = (1, 3)  # extra roadside poles / trees (unlabelled)
    layout_overlap: float = 0.7  # placement rule of the extra objects (sim: SimScene.max_overlap 0.35)
    # sensor: the camera's image pipeline, applied to the finished image
    sensor: bool = True  # on: blur, vignetting, noise, JPEG compression (sim: a noiseless, perfect image)
    blur_sigma: float = 1.1  # px, Gaussian (optics)
    vignetting: float = 0.45  # gain lost in the image corners (quadratic fall-off from the centre)
    noise_sigma: float = 9.0  # 8-bit levels, Gaussian sensor noise
    jpeg_quality: tuple = (10, 40)  # JPEG quality, drawn per image (inclusive range)

    def __post_init__(self):
        _check(self, {
            **{p: ("switch", None, None) for p in PARTS},
            "texture_noise": ("num", 0.0, 64.0), "light_gradient": ("num", 0.0, 1.0),
            "shadow_strength": ("num", 0.0, 1.0), "camera_height": ("range", 0.2, 20.0),
            "focal_px": ("range", 10.0, 5000.0), "horizon": ("range", 0.0, 1.0),
            "road_half_width": ("range", 1.0, 40.0), "parked_rows": ("irange", 0, 10),
            "parked_per_row": ("irange", 0, 20), "extra_cars": ("irange", 0, 20), "extra_persons": ("irange", 0, 20),
            "extra_distractors": ("irange", 0, 20), "layout_overlap": ("num", 0.0, 1.0),
            "blur_sigma": ("num", 0.0, 10.0), "vignetting": ("num", 0.0, 1.0), "noise_sigma": ("num", 0.0, 64.0),
            "jpeg_quality": ("irange", 1, 100),
        })

    @property
    def parts_on(self) -> Tuple[str, ...]:
        """The parts switched on, in :data:`PARTS` order."""
        return tuple(p for p in PARTS if getattr(self, p))

    def stamp(self) -> dict:
        """``{part: {strength: value}}`` of the parts switched on: everything of the style that changes pixels."""
        return {p: {f: getattr(self, f) for f in PART_FIELDS[p]} for p in self.parts_on}

    def only(self, *parts: str) -> "RealStyle":
        """This style's strengths with exactly ``parts`` switched on (none: the sim style)."""
        bad = [p for p in parts if p not in PARTS]
        if bad:
            raise ValueError(f"sim2real: no part {bad[0]!r}; expected one of {', '.join(PARTS)}")
        return dataclasses.replace(self, **{p: p in parts for p in PARTS})


SIM_STYLE = RealStyle().only()  # every part off


@dataclass
class Sim2RealImage:
    """One rendered image with its annotation and what the tests and the preview look at."""

    image: np.ndarray  # HxWx3 uint8, RGB
    boxes: np.ndarray  # Nx4 float32 XYXY_ABS: visible extent of each car (x2 = max_x + 1)
    iscrowd: np.ndarray  # N uint8: 1 = less than SimScene.min_visible of the car is visible (an ignore region)
    object_ids: np.ndarray  # N int64: which sampled object each box is (base: 0.., layout extras: 1000 + j)
    full_boxes: np.ndarray  # Nx4 float32: each car's whole projected box, px (before occlusion and clipping)
    labels: np.ndarray  # HxW uint8: what each pixel shows, an index into LABELS
    horizon: float  # horizon row, px from the top
    camera_height: float  # m
    focal_px: float  # px


def _entropy(seed) -> Tuple[int, ...]:
    return (int(seed),) if np.isscalar(seed) else tuple(int(s) for s in seed)


def stream_seed(seed: Union[int, Sequence[int]], stream: str, *sub: int) -> Tuple[int, ...]:
    """Entropy of one random stream of the image with ``seed`` (``stream`` a key of ``_STREAMS``, e.g. a part)."""
    return _entropy(seed) + (_STREAMS[stream],) + tuple(int(s) for s in sub)


def _rng(seed, stream, *sub):
    return np.random.default_rng(stream_seed(seed, stream, *sub))


# ---------------------------------------------------------------------------------------------------------
# the real car family (shapes part)


def _arc(cx, cy, rx, ry, t0, t1, n=5):
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rounded_rect(x0, y0, x1, y1, r):
    """Convex polygon (Nx2) of a rectangle with corners rounded by ``r`` px."""
    r = max(0.0, min(r, 0.5 * (x1 - x0), 0.5 * (y1 - y0)))
    return np.concatenate([
        _arc(x0 + r, y0 + r, r, r, np.pi, 1.5 * np.pi), _arc(x1 - r, y0 + r, r, r, 1.5 * np.pi, 2 * np.pi),
        _arc(x1 - r, y1 - r, r, r, 0, 0.5 * np.pi), _arc(x0 + r, y1 - r, r, r, 0.5 * np.pi, np.pi)])


def _dome(xa, xr0, xr1, xe, y_base, y_top):
    """Convex cabin silhouette: quarter ellipses from (xa, y_base) up to the roof (xr0..xr1, y_top) and down
    to (xe, y_base)."""
    ry = y_base - y_top
    return np.concatenate([_arc(xr0, y_base, xr0 - xa, ry, np.pi, 1.5 * np.pi, 6),
                           _arc(xr1, y_base, xe - xr1, ry, 1.5 * np.pi, 2 * np.pi, 6)])


def _shrink(poly, f, cx, cy):
    return (poly - (cx, cy)) * f + (cx, cy)


def _real_car_shapes(box, side, body, colour, facing_left):
    """Shapes (:func:`._rasterise`) of one car of the real family in ``box`` (XYXY px)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    b = _REAL_BODIES[body]
    bt = y0 + b["body_top"] * h
    bottom = y1 - 0.1 * h
    cx = 0.5 * (x0 + x1)
    shapes = []
    if side:
        a, r0, r1, e = b["cabin"]
        if not facing_left:  # mirror the silhouette
            a, r0, r1, e = 1 - e, 1 - r1, 1 - r0, 1 - a
        cabin = _dome(x0 + a * w, x0 + r0 * w, x0 + r1 * w, x0 + e * w, bt + 0.04 * h, y0)
        shapes.append(("poly", cabin, colour))
        shapes.append(("poly", _rounded_rect(x0, bt, x1, bottom, 0.4 * (bottom - bt)), colour))
        wx = 0.5 * (x0 + a * w + x0 + e * w)
        shapes.append(("poly", _shrink(cabin, 0.8, wx, bt + 0.04 * h), _GLASS))
        shapes.append(("rect", (wx - 0.025 * w, y0 + 0.1 * h, wx + 0.025 * w, bt), colour))  # B-pillar
        r = max(1.0, 0.21 * h)
        for wc in (x0 + 0.19 * w, x1 - 0.19 * w):
            shapes.append(("circle", (wc, y1 - r, r), _TYRE))
            shapes.append(("circle", (wc, y1 - r, 0.5 * r), _RIM))
        front, back = (x0, x1) if facing_left else (x1, x0)
        sgn = 1 if facing_left else -1  # direction from the front end into the car
        fx = sorted((front, front + sgn * 0.06 * w))
        shapes.append(("rect", (fx[0], bt + 0.12 * h, fx[1], bt + 0.22 * h), _HEAD))
        bx = sorted((back, back - sgn * 0.04 * w))
        shapes.append(("rect", (bx[0], bt + 0.1 * h, bx[1], bt + 0.2 * h), _TAIL))
    else:
        cabin = _dome(x0 + 0.08 * w, x0 + 0.24 * w, x1 - 0.24 * w, x1 - 0.08 * w, bt + 0.04 * h, y0)
        shapes.append(("poly", cabin, colour))
        shapes.append(("poly", _rounded_rect(x0, bt, x1, bottom, 0.3 * (bottom - bt)), colour))
        shapes.append(("poly", _shrink(cabin, 0.78, cx, bt + 0.04 * h), _GLASS))
        shapes.append(("rect", (x0 + 0.05 * w, y1 - 0.16 * h, x0 + 0.23 * w, y1), _TYRE))
        shapes.append(("rect", (x1 - 0.23 * w, y1 - 0.16 * h, x1 - 0.05 * w, y1), _TYRE))
        for lx in (x0 + 0.04 * w, x1 - 0.24 * w):
            shapes.append(("rect", (lx, bt + 0.1 * h, lx + 0.2 * w, bt + 0.2 * h), _TAIL))
        shapes.append(("rect", (cx - 0.13 * w, bt + 0.28 * h, cx + 0.13 * w, bt + 0.38 * h), _PLATE))
    return shapes


def _car_look(seed, index, style):
    """(body, colour, facing_left) of car ``index`` in the real family, or None for the sim car (shapes off)."""
    if not style.shapes:
        return None
    rng = _rng(seed, "shapes", index)
    names = list(_REAL_BODIES)
    cum = np.cumsum([_REAL_BODIES[n]["weight"] for n in names])
    body = names[min(int(np.searchsorted(cum / cum[-1], rng.random(), side="right")), len(names) - 1)]
    colour = _REAL_CAR_COLOURS[int(rng.random() * len(_REAL_CAR_COLOURS))] * np.float32(rng.uniform(0.85, 1.1))
    return body, colour, bool(rng.random() < 0.5)


# ---------------------------------------------------------------------------------------------------------
# texture part and sensor part


def _texture_surfaces(img, mask, rng, sigma):
    """Add texture (coarse blotches + fine grain, std ``sigma`` 8-bit levels) to ``img``'s pixels in ``mask``."""
    h, w = mask.shape
    coarse = cv2.resize(rng.normal(0, 1, (h // 8 + 1, w // 8 + 1)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    t = np.float32(sigma / math.sqrt(2)) * (coarse + fine)
    img[mask] += t[mask][:, None]


def _soft_shadow(img, box, strength):
    """Darken the ground under an object standing on it: a blurred ellipse centred on its box's bottom."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    sigma = max(0.7, 0.06 * bh)
    pad = int(3 * sigma) + 2
    h, w = img.shape[:2]
    wx0, wx1 = max(int(x0 - 0.1 * bw) - pad, 0), min(int(x1 + 0.1 * bw) + pad, w)
    wy0, wy1 = max(int(y1 - 0.2 * bh) - pad, 0), min(int(y1 + 0.1 * bh) + pad, h)
    if wx1 <= wx0 or wy1 <= wy0:
        return
    mask = np.zeros((wy1 - wy0, wx1 - wx0), np.float32)
    centre = (int(round(0.5 * (x0 + x1) - wx0)), int(round(y1 - 0.03 * bh - wy0)))
    cv2.ellipse(mask, centre, (max(1, int(round(0.58 * bw))), max(1, int(round(0.1 * bh)))), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    img[wy0:wy1, wx0:wx1] *= (1.0 - np.float32(strength) * mask)[..., None]


def _texture_object(img, inst, oid, box, rng, sigma):
    """Shade an object (lit from above) and give its pixels a fine grain (std ``sigma / 2``)."""
    x0, y0, x1, y1 = box
    _vertical_shade(img, inst, oid, int(y0), int(np.ceil(y1)) + 1, int(x0), int(np.ceil(x1)) + 1)
    m = inst == oid
    img[m] += rng.normal(0, 0.5 * sigma, (int(m.sum()), 1)).astype(np.float32)


def _lighting(img, rng, strength):
    """A directional light: a linear gain ramp across the image (``strength`` peak to peak), and an exposure."""
    h, w = img.shape[:2]
    a = rng.uniform(0, 2 * np.pi)
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    ramp = np.float32(np.cos(a)) * xs[None, :] + np.float32(np.sin(a)) * ys[:, None]
    ramp /= max(float(np.abs(ramp).max()), 1e-6)
    gain = (1.0 + np.float32(0.5 * strength) * ramp) * np.float32(rng.uniform(0.88, 1.1))
    img *= gain[..., None]


def apply_sensor(image: np.ndarray, style: "RealStyle", seed: Union[int, Sequence[int]]) -> np.ndarray:
    """The sensor part: optical blur, vignetting, Gaussian noise, JPEG compression, in a camera's order.

    ``image``: HxWx3 uint8 RGB (the finished rendering); ``seed``: entropy of the per-image draws (noise, JPEG
    quality; :func:`stream_seed` ``(image seed, "sensor")`` in :func:`render_sim2real`). Returns HxWx3 uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    x = image.astype(np.float32)
    if style.blur_sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), style.blur_sigma, borderType=cv2.BORDER_REFLECT)
    h, w = x.shape[:2]
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    r2 = (xs[None, :] ** 2 + ys[:, None] ** 2) / 0.5  # 1 in the corners
    x *= (1.0 - np.float32(style.vignetting) * r2)[..., None]
    x += rng.normal(0, style.noise_sigma, x.shape).astype(np.float32)
    u8 = np.clip(np.round(x), 0, 255).astype(np.uint8)
    quality = int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always has a JPEG codec
        raise RuntimeError("OpenCV could not encode a JPEG")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


# ---------------------------------------------------------------------------------------------------------
# the scene


@dataclass
class _Object:
    index: int  # base objects 0.., layout extras _EXTRA + j: the key of its appearance streams
    cls: str
    depth: float  # m
    box: np.ndarray  # XYXY px, whole projected box
    side: bool  # side view (else rear view)
    look: tuple  # car of the real family: (body, colour, facing_left); None otherwise


def _place(placed, index, cls, d, side, lat, scale, look, p, horizon, vx, cam_h, max_overlap):
    """Project an object standing on the ground at depth ``d`` m, ``lat`` m off the road axis; keep it (append
    to ``placed``) when large enough, inside enough and not too occluding or occluded."""
    if cls == "car" and look is not None:
        wm, hm = _REAL_BODIES[look[0]]["size"][0 if side else 1]
    else:
        wm, hm = _SIZES[cls][0 if side else 1]
    bw, bh = p.focal_px * wm * scale / d, p.focal_px * hm * scale / d
    cx = vx + p.focal_px * lat / d
    y1 = horizon + p.focal_px * cam_h / d
    box = np.array([cx - bw / 2, y1 - bh, cx + bw / 2, y1])
    if bh < p.min_box_px or box[0] < -0.3 * bw or box[2] > p.width + 0.3 * bw or box[3] > p.height + 0.5:
        return
    if bw > 1.1 * p.width or box[1] < -0.2 * bh:  # a bus filling the view, or cut off at the top: not a scene
        return
    if not _overlaps(box, bw * bh, [o.box for o in placed], max_overlap):
        placed.append(_Object(index, cls, d, box, side, look))


def _log_uniform(u, lo, hi):
    return float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))


def _pavement(u, half_road):
    """Lateral position (m) on a pavement from one uniform draw: left or right, 0.3..3.3 m beyond the kerb."""
    return (-1 if u < 0.5 else 1) * (half_road + 0.3 + abs(2 * u - 1) * 3.0)


def _base_objects(seed, scene, style, geo, p, horizon, vx, cam_h, half_road):
    """The scene's own objects (every style): five draws from ``geo`` per candidate, whatever the style."""
    placed = []
    cum = np.cumsum(scene.class_weights) / sum(scene.class_weights)
    for i in range(int(geo.integers(scene.objects[0], scene.objects[1] + 1))):
        u_cls, u_depth, u_side, u_scale, u_lat = geo.random(5)
        cls = _OBJECT_CLASSES[min(int(np.searchsorted(cum, u_cls, side="right")), 2)]
        d = _log_uniform(u_depth, scene.min_depth, scene.max_depth)
        if cls == "person":
            lat = _pavement(u_lat, half_road)
        else:  # cars within 5 m of the road axis (the sim road's lanes), buses within 4 m
            lat = (2 * u_lat - 1) * (5.0 if cls == "car" else 4.0)
        look = _car_look(seed, i, style) if cls == "car" else None
        _place(placed, i, cls, d, bool(u_side < 0.5), lat, 0.9 + 0.2 * u_scale, look, p, horizon, vx, cam_h,
               scene.max_overlap)
    return placed


def _layout_objects(placed, seed, scene, style, p, horizon, vx, cam_h, half_road):
    """The layout part's extra objects: parked rows, traffic in every lane, pedestrians (own stream)."""
    rng = _rng(seed, "layout", 1)
    cands = []  # (cls, depth, side, lat, scale)
    for _ in range(int(rng.integers(style.parked_rows[0], style.parked_rows[1] + 1))):
        sgn = -1 if rng.random() < 0.5 else 1
        perpendicular = bool(rng.random() < 0.3)  # parked across the kerb: seen from the side, closer together
        lat = sgn * (half_road - (2.6 if perpendicular else 1.1))
        d = _log_uniform(rng.random(), scene.min_depth * 1.5, scene.max_depth * 0.7)
        spacing = rng.uniform(2.6, 3.2) if perpendicular else rng.uniform(5.2, 6.5)
        for c in range(int(rng.integers(style.parked_per_row[0], style.parked_per_row[1] + 1))):
            cands.append(("car", d + c * spacing, perpendicular, lat + rng.uniform(-0.2, 0.2), rng.uniform(0.9, 1.1)))
    for _ in range(int(rng.integers(style.extra_cars[0], style.extra_cars[1] + 1))):
        cands.append(("car", _log_uniform(rng.random(), scene.min_depth, scene.max_depth), bool(rng.random() < 0.15),
                      rng.uniform(-(half_road - 1.5), half_road - 1.5), rng.uniform(0.9, 1.1)))
    for _ in range(int(rng.integers(style.extra_persons[0], style.extra_persons[1] + 1))):
        cands.append(("person", _log_uniform(rng.random(), scene.min_depth, scene.max_depth), False,
                      _pavement(rng.random(), half_road), rng.uniform(0.9, 1.1)))
    for j, (cls, d, side, lat, scale) in enumerate(cands):
        look = _car_look(seed, _EXTRA + j, style) if cls == "car" else None
        _place(placed, _EXTRA + j, cls, d, side, lat, scale, look, p, horizon, vx, cam_h, style.layout_overlap)


def _lane_lines(img, ground, row_depth, vx, focal, half_road):
    """Dashed lane lines half way to each kerb and the solid lines of the parking lanes (layout part)."""
    w = img.shape[1]
    cols = np.arange(w, dtype=np.float32) + 0.5
    lateral = np.abs((cols[None, :] - vx) * row_depth[:, None] / focal)
    dashed = (np.abs(lateral - 0.5 * half_road) < 0.12) & ((row_depth[:, None] // 3.0) % 2 == 1)
    solid = np.abs(lateral - (half_road - 2.3)) < 0.1
    img[ground & (dashed | solid)] = _MARKING


def render_sim2real(seed: Union[int, Sequence[int]], scene: SimScene = SimScene(),
                    style: RealStyle = SIM_STYLE) -> Sim2RealImage:
    """Render one image of ``scene`` in ``style`` (default: the sim style) from ``seed`` (SeedSequence entropy)."""
    h, w = scene.height, scene.width
    cam = _rng(seed, "camera")
    if style.camera:
        cam_h, focal = float(cam.uniform(*style.camera_height)), float(cam.uniform(*style.focal_px))
        horizon = float(cam.uniform(*style.horizon)) * h
    else:
        cam_h, focal = float(scene.camera_height), float(scene.focal_px)
        horizon = float(cam.uniform(*scene.horizon)) * h
    # the demo pair's scene parameters, for the pieces reused from it
    p = SceneParams(height=h, width=w, focal_px=focal, objects=scene.objects, min_depth=scene.min_depth,
                    max_depth=scene.max_depth, min_box_px=scene.min_box_px, max_overlap=scene.max_overlap,
                    distractors=scene.distractors, clear_noise_sigma=0.0)
    geo = _rng(seed, "geometry")
    vx = float(w * geo.uniform(0.4, 0.6))  # vanishing point column
    img, depth, row_depth, half_road = _background(
        p, geo, horizon, vx, camera_height=cam_h, ground_noise=0.0,
        road_half_width=style.road_half_width if style.layout else scene.road_half_width)
    sky = depth >= SKY_DEPTH
    ground = (depth == row_depth[:, None]) & ~sky
    if style.layout:
        _lane_lines(img, ground, row_depth, vx, focal, half_road)
    before = depth.copy()
    roadside = (half_road + 0.5, half_road + 4.0)  # m off the road axis: on the pavement, whatever the road
    _distractors(img, depth, p, _rng(seed, "roadside"), horizon, vx, camera_height=cam_h, lateral=roadside)
    if style.layout:
        _distractors(img, depth, dataclasses.replace(p, distractors=style.extra_distractors),
                     _rng(seed, "layout", 0), horizon, vx, camera_height=cam_h, lateral=roadside)
    roadside_px = depth != before
    if style.texture:
        _texture_surfaces(img, ~sky, _rng(seed, "texture", 0), style.texture_noise)

    placed = _base_objects(seed, scene, style, geo, p, horizon, vx, cam_h, half_road)
    if style.layout:
        _layout_objects(placed, seed, scene, style, p, horizon, vx, cam_h, half_road)

    # paint far to near into the image and an instance map (ids 1.. in painting order)
    inst = np.zeros((h, w), np.int32)
    placed.sort(key=lambda o: -o.depth)
    own = []  # pixels of each object right after painting it: all of its own (only nearer ones come later)
    for k, o in enumerate(placed, start=1):
        if style.texture:
            _soft_shadow(img, o.box, style.shadow_strength)
        look = _rng(seed, "object", o.index)
        if o.cls == "car" and o.look is not None:
            shapes = _real_car_shapes(o.box, o.side, o.look[0], o.look[1], o.look[2])
        elif o.cls == "car":
            colour = _CAR_COLOURS[int(look.random() * len(_CAR_COLOURS))] * np.float32(look.uniform(0.9, 1.05))
            shapes = _draw_car(img, inst, k, o.box, o.side, colour)
        elif o.cls == "bus":
            shapes = _draw_bus(img, inst, k, o.box, o.side, _BUS_COLOURS[int(look.random() * len(_BUS_COLOURS))])
        else:
            shapes = _draw_person(img, inst, k, o.box, look)
        _rasterise(img, inst, k, shapes, antialias=style.texture)
        own.append(int((inst == k).sum()))
        if style.texture:
            _texture_object(img, inst, k, o.box, _rng(seed, "texture", 2, o.index), style.texture_noise)
    if style.texture:
        _lighting(img, _rng(seed, "texture", 1), style.light_gradient)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if style.sensor:
        image = apply_sensor(image, style, stream_seed(seed, "sensor"))

    labels = np.zeros((h, w), np.uint8)
    labels[ground] = LABELS.index("ground")
    labels[~sky & ~ground] = LABELS.index("building")
    labels[roadside_px] = LABELS.index("roadside")
    boxes, crowd, ids, full = [], [], [], []
    for k, o in enumerate(placed, start=1):
        m = inst == k
        labels[m] = LABELS.index(o.cls)
        ys, xs = np.nonzero(m)
        if o.cls != "car" or len(ys) == 0:  # distractors are never annotated; a hidden car has nothing to box
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        crowd.append(int(len(ys) < scene.min_visible * own[k - 1]))
        ids.append(o.index)
        full.append(o.box)
    return Sim2RealImage(
        image=image, boxes=np.array(boxes, np.float32).reshape(-1, 4), iscrowd=np.array(crowd, np.uint8),
        object_ids=np.array(ids, np.int64), full_boxes=np.array(full, np.float32).reshape(-1, 4), labels=labels,
        horizon=horizon, camera_height=cam_h, focal_px=focal)
