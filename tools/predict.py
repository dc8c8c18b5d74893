#!/usr/bin/env python
"""Detect objects on your own images or videos with a trained checkpoint; write COCO-format JSON and, with
--vis-dir, annotated PNGs (an annotated .mp4 per video).

  python tools/predict.py --config-file configs/X.yaml --weights output/model_final.pth \\
      --input my_photos/ --output preds.json --vis-dir vis/
  python tools/predict.py --config-file configs/X.yaml --weights W.pth --input 'shots/*.jpg' dashcam.mp4 \\
      --score-thresh 0.3 --batch-size 8 --device cuda

--input takes folders (their images, sorted; --recursive also searches subfolders), glob patterns (quote them),
image files and video files (.mp4 .avi .mov .mkv, read frame by frame with OpenCV). Images are read as
detectron2 reads them for inference (EXIF orientation applied: width/height are as displayed).

The JSON (written atomically) has "images" (id, file_name, width, height; a video frame is one image named
"<video>#<frame index>" with its "frame_index"), "categories" (id, name: the class names of the config's
DATASETS.TEST[0] or TRAIN[0] -- a register_coco_instances set's JSON categories --, else class_<index>; ids are the
dataset's own where its metadata maps them, else index + 1), "annotations" (id, image_id, category_id, bbox [x, y,
w, h] in pixels of the image as displayed, score) -- a list pycocotools' COCO.loadRes reads as it is -- and "info"
(config, weights, whether the EMA / teacher weights were used, score threshold, skipped files).

An unreadable image (or a video without a readable frame) is skipped with a warning naming it and counted; if
nothing can be read the run fails. Bad input (missing config or weights, weights that do not fit the config,
no image matched, a folder without images, a video that cannot be opened) exits with status 2 and one line on
stderr.
"""
import argparse
import contextlib
import glob
import logging
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # imported, not run: tools/ for _toolstart
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _toolstart  # noqa: E402  (stdlib only: the start-up line, library notices kept off the console)

_toolstart.begin("predict.py")

# isort: split
import metaalign_det  # noqa: E402,F401  (compat first; registers the project's models and datasets)

# isort: split
import cv2
import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.data.detection_utils import convert_image_to_rgb, convert_PIL_to_numpy, read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

from metaalign_det.cli import ToolError, fail, load_config, split_config_overrides
from metaalign_det.data.datasets.image_files import DECODE_ERRORS
from metaalign_det.evaluation import (
    BatchPredictor,
    WeightsMismatchError,
    coco_results,
    load_eval_weights,
    model_classes,
)
from metaalign_det.utils.io import atomic_write_json
from metaalign_det.utils.visualization import draw_predictions, write_png

TOOL = "predict.py"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # what a folder is searched for
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
DEFAULT_FPS = 25.0  # for the annotated video when the source does not say


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="YAML", help="the training config")
    p.add_argument("--weights", required=True, metavar="PTH", help="checkpoint (.pth / detectron2 .pkl)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="folders, glob patterns, image files, video files")
    p.add_argument("--output", default="predictions.json", metavar="JSON",
                   help="COCO-format predictions (default: predictions.json)")
    p.add_argument("--vis-dir", metavar="DIR", help="write annotated PNGs (and .mp4 per video) here")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scoring at least this (MODEL.ROI_HEADS.SCORE_THRESH_TEST; default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward (default 4)")
    p.add_argument("--device", help="cpu / cuda (default: MODEL.DEVICE)")
    p.add_argument("--recursive", action="store_true", help="also search the subfolders of folder inputs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = p.parse_args(argv)
    args.input, args.opts = split_config_overrides(args.input, args.opts)
    return args


def warn(message: str) -> None:
    tqdm.write(f"{TOOL}: warning: {message}", file=sys.stderr)


# ---- inputs -----------------------------------------------------------------------------------------------
def _has_ext(path: str, extensions) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def _folder_images(folder: str, recursive: bool) -> List[str]:
    if recursive:
        found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder)]
    return sorted(f for f in found if os.path.isfile(f) and _has_ext(f, IMAGE_EXTENSIONS))


@contextlib.contextmanager
def _native_stderr_silenced():
    """FFmpeg (inside OpenCV) prints its complaints about a damaged file straight to file descriptor 2; the
    tool says it in one line instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open_video(path: str):
    with _native_stderr_silenced():
        cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise ToolError(f"--input {path}: cannot open the video (OpenCV cannot read this file)")
    return cap


def collect_inputs(specs: List[str], recursive: bool) -> List[Tuple[str, str]]:
    """[(path, "image" | "video")] in the given order (folders and globs sorted), each file once.

    Every video is opened once here, so that one that cannot be is refused before the model is built."""
    if not specs:
        raise ToolError("--input: give at least one folder, glob pattern, image or video")
    out, seen = [], set()
    for spec in specs:
        if os.path.isdir(spec):
            files = _folder_images(spec, recursive)
            if not files:
                where = "this folder or its subfolders" if recursive else "this folder (--recursive: subfolders too)"
                raise ToolError(f"--input {spec}: no image ({' '.join(IMAGE_EXTENSIONS)}) in {where}")
        elif os.path.isfile(spec):
            files = [spec]
        elif any(c in spec for c in "*?["):
            files = sorted(f for f in glob.glob(spec, recursive=True)
                           if os.path.isfile(f) and _has_ext(f, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
            if not files:
                raise ToolError(f"--input {spec}: no image or video file matched")
        else:
            raise ToolError(f"--input {spec}: no such file or folder")
        for f in files:
            key = os.path.realpath(f)
            if key in seen:
                continue
            seen.add(key)
            kind = "video" if _has_ext(f, VIDEO_EXTENSIONS) else "image"
            if kind == "video":
                _open_video(f).release()
            out.append((f, kind))
    return out


def _frame_count(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    return max(n, 0)


def _from_bgr(frame: np.ndarray, fmt: str) -> np.ndarray:
    """An OpenCV frame (BGR) in the config's INPUT.FORMAT, as read_image would give it."""
    if fmt == "BGR":
        return frame
    if fmt == "RGB":
        return np.ascontiguousarray(frame[:, :, ::-1])
    return convert_PIL_to_numpy(Image.fromarray(frame[:, :, ::-1]), fmt)


class Item:
    """One image to run: ``name`` (its JSON file_name), ``image`` (INPUT.FORMAT, [H, W, C] uint8), ``source``
    (the file), ``frame`` (index in a video, else None) and ``fps`` (of the video)."""

    __slots__ = ("name", "image", "source", "frame", "fps")

    def __init__(self, name, image, source, frame=None, fps=None):
        self.name, self.image, self.source, self.frame, self.fps = name, image, source, frame, fps


def read_items(inputs: List[Tuple[str, str]], fmt: str, skipped: List[Dict]) -> Iterator[Item]:
    """Images and video frames one by one; unreadable ones go to ``skipped`` with a warning."""
    for path, kind in inputs:
        if kind == "image":
            try:
                image = read_image(path, format=fmt)  # EXIF orientation applied, as detectron2 reads images
            except DECODE_ERRORS as e:
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                skipped.append({"file": path, "reason": reason})
                warn(f"{path}: cannot be read as an image ({reason}); skipped")
                continue
            yield Item(path, image, path)
            continue
        cap = _open_video(path)
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        index = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield Item(f"{path}#{index}", _from_bgr(frame, fmt), path, index, fps)
                index += 1
        finally:
            cap.release()
        if index == 0:
            skipped.append({"file": path, "reason": "no frame could be read"})
            warn(f"{path}: no frame could be read from the video; skipped")


def batches(items: Iterator[Item], size: int) -> Iterator[List[Item]]:
    """Up to ``size`` consecutive items of one image size per batch: images of different sizes would be
    zero-padded to the largest, which changes GroupNorm statistics (and so the detections) compared with one
    image at a time; one size per batch keeps the results those of DefaultPredictor."""
    batch = []
    for item in items:
        if batch and item.image.shape != batch[0].image.shape:
            yield batch
            batch = []
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---- annotated output -------------------------------------------------------------------------------------
class Visualizations:
    """Annotated PNGs (one per image, named after it; a numeric suffix when two inputs share a name) and one
    annotated .mp4 per video (written under a temporary name and renamed when complete)."""

    def __init__(self, folder: str, class_names: List[str]):
        self.folder = folder
        self.metadata = Metadata(name="predict", thing_classes=list(class_names))
        self.used = set()
        self.videos: Dict[str, Tuple[object, str, str]] = {}  # source -> (writer, temporary path, final path)
        self.written: List[str] = []
        os.makedirs(folder, exist_ok=True)

    def _name(self, source: str, ext: str) -> str:
        stem = os.path.splitext(os.path.basename(source))[0] or "image"
        name, k = f"{stem}{ext}", 1
        while name in self.used:
            name, k = f"{stem}_{k}{ext}", k + 1
        self.used.add(name)
        return os.path.join(self.folder, name)

    def add(self, item: Item, instances, fmt: str) -> None:
        rgb = convert_image_to_rgb(item.image, fmt)
        panel = draw_predictions(rgb, instances, self.metadata, score_threshold=0.0)  # the model thresholded
        if item.frame is None:
            self.written.append(write_png(self._name(item.source, ".png"), panel))
            return
        if item.source not in self.videos:
            final = self._name(item.source, ".mp4")
            tmp = os.path.join(self.folder, f".{os.path.basename(final)[:-4]}.partial.mp4")
            h, w = panel.shape[:2]
            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), item.fps, (w, h))
            if not writer.isOpened():
                raise ToolError(f"--vis-dir {self.folder}: OpenCV cannot write the video {tmp} (codec mp4v)")
            self.videos[item.source] = (writer, tmp, final)
        self.videos[item.source][0].write(np.ascontiguousarray(panel[:, :, ::-1]))

    def close(self, complete: bool = True) -> None:
        """Finish the videos: renamed to their final names if ``complete``, else removed."""
        for writer, tmp, final in self.videos.values():
            writer.release()
            if complete:
                os.replace(tmp, final)
                self.written.append(final)
            elif os.path.exists(tmp):
                os.remove(tmp)
        self.videos = {}


# ---- the run ----------------------------------------------------------------------------------------------
def setup(args):
    """Checked options, config, inputs, and the model with the checked weights loaded (eval mode)."""
    if args.batch_size < 1:
        raise ToolError(f"--batch-size {args.batch_size}: expected >= 1")
    if not args.score_thresh >= 0.0:
        raise ToolError(f"--score-thresh {args.score_thresh}: expected a value >= 0")
    if os.path.isdir(args.output):
        raise ToolError(f"--output {args.output}: is a folder, expected a JSON file name")
    cfg = load_config(args.config_file, args.opts)
    if not os.path.isfile(args.weights):
        raise ToolError(f"--weights {args.weights}: no such file")
    if args.device:
        cfg.MODEL.DEVICE = args.device
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ToolError(f"MODEL.DEVICE {cfg.MODEL.DEVICE}: no CUDA device is available (use --device cpu)")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(args.score_thresh)
    cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    inputs = collect_inputs(args.input, args.recursive)
    model = build_model(cfg)
    loaded = load_eval_weights(model, cfg, args.weights)
    for warning in loaded.warnings:
        warn(warning)
    return cfg, inputs, model.eval(), loaded.ema


def run(args, cfg, inputs, model, ema: bool) -> Dict:
    names, category_ids, classes_from, fallback = model_classes(cfg)
    if fallback:
        warn(classes_from)
    fmt = cfg.INPUT.FORMAT
    predictor = BatchPredictor(cfg, model)
    vis = Visualizations(args.vis_dir, names) if args.vis_dir else None
    skipped: List[Dict] = []
    images, annotations = [], []
    total: Optional[int] = sum(1 if kind == "image" else _frame_count(p) for p, kind in inputs) or None
    start = time.perf_counter()
    bar = tqdm(total=total, unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True)
    complete = False
    try:
        for batch in batches(read_items(inputs, fmt, skipped), args.batch_size):
            for item, instances in zip(batch, predictor([it.image for it in batch])):
                image_id = len(images) + 1
                h, w = item.image.shape[:2]
                entry = {"id": image_id, "file_name": item.name, "width": int(w), "height": int(h)}
                if item.frame is not None:
                    entry["frame_index"] = item.frame
                images.append(entry)
                for row in coco_results(instances, image_id, category_ids):
                    annotations.append(dict(id=len(annotations) + 1, **row))
                if vis is not None:
                    vis.add(item, instances, fmt)
            bar.update(len(batch))
        complete = True
    finally:
        bar.close()
        if vis is not None:
            vis.close(complete)
    seconds = time.perf_counter() - start
    if not images:
        first = skipped[0] if skipped else {"file": "?", "reason": "?"}
        raise ToolError(f"no input could be read ({len(skipped)} skipped; first: {first['file']}: "
                        f"{first['reason']})")
    result = {
        "info": {
            "tool": "tools/predict.py",
            "config_file": args.config_file,
            "weights": args.weights,
            "weights_entry": "ema" if ema else "model",
            "score_thresh": float(args.score_thresh),
            "classes_from": classes_from,
            "skipped": skipped,
        },
        "images": images,
        "categories": [{"id": i, "name": n} for i, n in zip(category_ids, names)],
        "annotations": annotations,
    }
    atomic_write_json(args.output, result)
    rate = len(images) / seconds if seconds > 0 else float("inf")
    print(f"{len(images)} image(s), {len(annotations)} detection(s) (score >= {args.score_thresh:g}) in "
          f"{seconds:.1f} s ({rate:.2f} img/s); wrote {args.output}", flush=True)
    if vis is not None:
        print(f"wrote {len(vis.written)} annotated file(s) to {args.vis_dir}", flush=True)
    if skipped:
        print(f"skipped {len(skipped)} unreadable input(s) (listed in the JSON's info.skipped)", flush=True)
    return result


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="metaalign_det")
    logging.getLogger("metaalign_det").setLevel(logging.WARNING)
    try:
        cfg, inputs, model, ema = setup(args)
        return run(args, cfg, inputs, model, ema)
    except (ToolError, WeightsMismatchError, FileNotFoundError) as e:
        fail(TOOL, e)


if __name__ == "__main__":
    main()
