"""tools/predict.py end to end in a subprocess, as a user runs it after training: a tiny detector trained a few
steps with the real trainer (EMA on) on a generated domain pair declared by a manifest, then predictions on
folders, globs, a generated video and an EXIF-rotated JPEG, and the bad inputs that must end with one line and
exit status 2."""
import glob
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import metaalign_det  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from metaalign_det.cli import load_config, register_config_datasets
from metaalign_det.evaluation import BatchPredictor, load_eval_weights
from tests.helpers.configs import tiny_rcnn_cfg
from tests.helpers.training import train
from tests.toy_data import CLASSES, make_toy_coco

from .conftest import last_stderr_line, run_tool

HW = (48, 64)  # (H, W) of the generated images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config YAML, checkpoint with "model" and "ema" entries, folder of 3 test images) after 3 steps."""
    root = tmp_path_factory.mktemp("predict")
    src = make_toy_coco(str(root / "src"), n_images=4, size=HW, seed=1)
    tgt = make_toy_coco(str(root / "tgt"), n_images=3, size=HW, seed=2, foggy=True)
    manifest = root / "pair.yaml"
    manifest.write_text(
        f"name: predtoy\nclasses: [{', '.join(CLASSES)}]\n"
        f"source: {{type: coco, json: '{src}', image_root: '{root / 'src'}'}}\n"
        f"target: {{type: coco, json: '{tgt}', image_root: '{root / 'tgt'}'}}\n"
        f"test: {{type: coco, json: '{tgt}', image_root: '{root / 'tgt'}'}}\n"
    )
    cfg = tiny_rcnn_cfg(num_classes=len(CLASSES))
    cfg.DATASETS.PAIR_MANIFESTS = (str(manifest),)
    cfg.DATASETS.TRAIN = ("predtoy_source",)
    cfg.DATASETS.TEST = ("predtoy_test",)
    cfg.INPUT.MIN_SIZE_TRAIN = (HW[0],)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.MODEL.EMA.ENABLED = True
    cfg.MODEL.EMA.DECAY = 0.5  # after 3 updates the EMA differs clearly from the student
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SEED = 0
    cfg.OUTPUT_DIR = str(root / "out")
    register_config_datasets(cfg)
    train(cfg)
    yaml_path = root / "trained.yaml"
    yaml_path.write_text(cfg.dump())
    images = root / "images"
    images.mkdir()
    for f in sorted(glob.glob(str(root / "tgt" / "*.png"))):
        os.symlink(f, images / os.path.basename(f))
    return str(yaml_path), os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), str(images)


def _predict(cfg, weights, *args):
    return run_tool("predict.py", "--config-file", cfg, "--weights", weights, *args)


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def _check_structure(out, n_images):
    """The JSON's images / categories / annotations as documented; returns it."""
    report = json.loads(out.read_text())
    assert [c["name"] for c in report["categories"]] == CLASSES  # the config's dataset classes
    assert [c["id"] for c in report["categories"]] == [1, 2, 3]
    assert [im["id"] for im in report["images"]] == list(range(1, n_images + 1))
    sizes = {im["id"]: (im["width"], im["height"]) for im in report["images"]}
    cat_ids = {c["id"] for c in report["categories"]}
    for a in report["annotations"]:
        x, y, w, h = a["bbox"]
        iw, ih = sizes[a["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= iw + 1e-3 and y + h <= ih + 1e-3, (a, iw, ih)
        assert a["category_id"] in cat_ids and 0.0 <= a["score"] <= 1.0
    return report


def test_folder_json_and_annotated_pngs(trained, tmp_path):
    cfg, ckpt, images = trained
    out, vis = tmp_path / "preds.json", tmp_path / "vis"
    proc = _predict(cfg, ckpt, "--input", images, "--output", str(out), "--vis-dir", str(vis),
                    "--score-thresh", "0", "--batch-size", "2")
    _ok(proc)
    report = _check_structure(out, 3)
    assert [im["file_name"] for im in report["images"]] == sorted(glob.glob(os.path.join(images, "*.png")))
    assert all((im["width"], im["height"]) == (HW[1], HW[0]) for im in report["images"])
    assert report["annotations"], "score threshold 0 keeps detections"
    assert report["info"]["weights_entry"] == "ema" and report["info"]["skipped"] == []
    assert "img/s" in proc.stderr  # the progress bar
    pngs = sorted(p.name for p in vis.iterdir())
    assert pngs == ["img_000.png", "img_001.png", "img_002.png"]
    for name in pngs:
        with Image.open(vis / name) as im:
            assert im.size == (HW[1], HW[0])
    # the EMA (teacher) entry is what an EMA config predicts with: the student's predictions differ
    student = tmp_path / "student.json"
    _ok(_predict(cfg, ckpt, "--input", images, "--output", str(student), "--score-thresh", "0",
                 "MODEL.EMA.ENABLED", "False"))
    student_report = json.loads(student.read_text())
    assert student_report["info"]["weights_entry"] == "model"
    assert [a["score"] for a in student_report["annotations"]] != [a["score"] for a in report["annotations"]]


def test_glob_and_files_once_each_and_no_detection_above_1(trained, tmp_path):
    cfg, ckpt, images = trained
    out = tmp_path / "preds.json"
    first = os.path.join(images, "img_000.png")
    proc = _predict(cfg, ckpt, "--input", os.path.join(images, "img_00[12].png"), first, first,
                    "--output", str(out), "--score-thresh", "1.01")
    _ok(proc)
    report = _check_structure(out, 3)
    names = [os.path.basename(im["file_name"]) for im in report["images"]]
    assert names == ["img_001.png", "img_002.png", "img_000.png"]  # glob sorted, then the file, once
    assert report["annotations"] == []


def _write_video(path, n=5):
    h, w = HW
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (w, h))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = rng.integers(60, 120, size=(h, w, 3), dtype=np.uint8)
        frame[8 + i : 24 + i, 10 + 4 * i : 30 + 4 * i] = (40, 40, 220)
        writer.write(frame)
    writer.release()


def _count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_video_frames_and_annotated_video(trained, tmp_path):
    cfg, ckpt, _ = trained
    video = tmp_path / "clip.mp4"
    _write_video(video)
    out, vis = tmp_path / "preds.json", tmp_path / "vis"
    proc = _predict(cfg, ckpt, "--input", str(video), "--output", str(out), "--vis-dir", str(vis),
                    "--score-thresh", "0", "--batch-size", "3")
    _ok(proc)
    report = _check_structure(out, 5)
    assert [im["file_name"] for im in report["images"]] == [f"{video}#{i}" for i in range(5)]
    assert [im["frame_index"] for im in report["images"]] == list(range(5))
    assert {(im["width"], im["height"]) for im in report["images"]} == {(HW[1], HW[0])}
    assert {a["image_id"] for a in report["annotations"]} == set(range(1, 6))
    assert sorted(p.name for p in vis.iterdir()) == ["clip.mp4"]  # no partial file left
    assert _count_frames(vis / "clip.mp4") == 5


def test_exif_rotated_jpeg_has_its_displayed_size(trained, tmp_path):
    cfg, ckpt, _ = trained
    stored = np.random.default_rng(1).integers(0, 255, size=(40, 64, 3), dtype=np.uint8)  # H 40, W 64 stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display -> 64 high, 40 wide
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif)
    out = tmp_path / "preds.json"
    _ok(_predict(cfg, ckpt, "--input", str(path), "--output", str(out), "--score-thresh", "0"))
    report = _check_structure(out, 1)
    assert (report["images"][0]["width"], report["images"][0]["height"]) == (40, 64)


def test_a_corrupt_image_is_skipped_and_named(trained, tmp_path):
    cfg, ckpt, images = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in sorted(glob.glob(os.path.join(images, "*.png")))[:2]:
        os.symlink(f, folder / os.path.basename(f))
    bad = folder / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "preds.json"
    proc = _predict(cfg, ckpt, "--input", str(folder), "--output", str(out))
    _ok(proc)
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("predict.py: warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"predict.py: warning: {bad}: cannot be read as an image (")
    assert warnings[0].endswith("; skipped")
    report = _check_structure(out, 2)
    assert [s["file"] for s in report["info"]["skipped"]] == [str(bad)]
    assert "skipped 1 unreadable input(s)" in proc.stdout


# ---- bad inputs: one line, exit 2 ------------------------------------------------------------------------
def _one_error_line(proc):
    """Status 2, no traceback, and stderr holds exactly one line after the start-up line: the error; returns its
    message."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[0] == "predict.py: loading torch and detectron2 ...", proc.stderr[-3000:]
    lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("predict.py: error: "), proc.stderr[-3000:]
    return lines[0][len("predict.py: error: "):]


def test_bad_inputs(trained, tiny_model_files, tmp_path):
    cfg, ckpt, images = trained
    out = str(tmp_path / "p.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    pattern = os.path.join(images, "*.jpg")
    assert _one_error_line(_predict(cfg, ckpt, "--input", pattern, "--output", out)) == (
        f"--input {pattern}: no image or video file matched")
    msg = _one_error_line(_predict(cfg, ckpt, "--input", str(empty), "--output", out))
    assert msg.startswith(f"--input {empty}: no image (.jpg .jpeg .png"), msg
    missing = str(tmp_path / "nope")
    assert _one_error_line(_predict(cfg, ckpt, "--input", missing)) == f"--input {missing}: no such file or folder"
    video = tmp_path / "broken.mp4"
    video.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    assert _one_error_line(_predict(cfg, ckpt, "--input", images, str(video), "--output", out)) == (
        f"--input {video}: cannot open the video (OpenCV cannot read this file)")
    no_weights = str(tmp_path / "nope.pth")
    assert _one_error_line(_predict(cfg, no_weights, "--input", images)) == f"--weights {no_weights}: no such file"
    no_cfg = str(tmp_path / "nope.yaml")
    assert _one_error_line(_predict(no_cfg, ckpt, "--input", images)) == f"--config-file {no_cfg}: no such file"
    _, two_class_ckpt, _ = tiny_model_files  # the same tiny model with 2 classes: its predictor does not fit
    msg = _one_error_line(_predict(cfg, two_class_ckpt, "--input", images, "--output", out))
    assert msg.startswith(f"{two_class_ckpt}: 4 weight shape(s) do not fit the config:"), msg
    assert msg.endswith("set MODEL.ROI_HEADS.NUM_CLASSES 2"), msg
    assert not os.path.exists(out)


def test_nothing_readable_exits_2_naming_the_file(trained, tmp_path):
    cfg, ckpt, _ = trained
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "p.json"
    proc = _predict(cfg, ckpt, "--input", str(bad), "--output", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = last_stderr_line(proc)
    assert line.startswith(f"predict.py: error: no input could be read (1 skipped; first: {bad}: "), line
    assert f"predict.py: warning: {bad}: cannot be read as an image" in proc.stderr  # said as it happened
    assert not out.exists()


def test_batched_predictions_equal_default_predictor(trained):
    """BatchPredictor on three same-size images in one forward gives DefaultPredictor's detections image by
    image (the trained EMA weights, loaded the way the tool loads them)."""
    cfg_file, ckpt, images = trained
    cfg = load_config(cfg_file, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    cfg.MODEL.WEIGHTS = ""
    reference = DefaultPredictor(cfg)
    assert load_eval_weights(reference.model, cfg, ckpt).ema
    model = build_model(cfg)
    load_eval_weights(model, cfg, ckpt)
    paths = sorted(glob.glob(os.path.join(images, "*.png")))
    batched = BatchPredictor(cfg, model)([read_image(p, format=cfg.INPUT.FORMAT) for p in paths])
    assert len(batched) == 3
    for path, got in zip(paths, batched):
        want = reference(read_image(path, format="BGR"))["instances"].to("cpu")  # DefaultPredictor takes BGR
        assert len(got) == len(want) > 0
        assert torch.equal(got.pred_classes, want.pred_classes)
        assert torch.allclose(got.scores, want.scores, atol=1e-5)
        assert torch.allclose(got.pred_boxes.tensor, want.pred_boxes.tensor, atol=1e-3)
