"""tools/eval.py end to end in a subprocess: a tiny checkpoint on a toy COCO dataset, and the bad inputs
that must end with one clear line and a non-zero exit code."""
import json

from .conftest import TOY_CLASSES, TOY_GT_PER_CLASS, TOY_IMAGES, last_stderr_line, run_tool


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr


def test_evaluates_and_writes_the_json(tiny_model_files, toy_coco, tmp_path):
    cfg, ckpt, _ = tiny_model_files
    json_file, image_root = toy_coco
    out = tmp_path / "ap.json"
    proc = run_tool(
        "eval.py", "--config-file", cfg, "--weights", ckpt, "--coco-json", f"toy_eval={json_file}:{image_root}",
        "--metric", "voc07", "--output", str(out), "--dataset", "toy_eval", "TEST.DETECTIONS_PER_IMAGE", "4",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"AP50 (voc07, IoU=0.50) on toy_eval — 2 classes, {TOY_IMAGES} images" in proc.stdout
    report = json.loads(out.read_text())
    assert report["metric"] == "voc07" and report["iou_threshold"] == 0.5 and report["weights"] == ckpt
    assert "11-point" in report["protocol"]
    ds = report["datasets"]["toy_eval"]
    assert [c["name"] for c in ds["classes"]] == TOY_CLASSES
    assert [c["num_gt"] for c in ds["classes"]] == [n * TOY_IMAGES for n in TOY_GT_PER_CLASS]
    # the model ran (score threshold 0), and the override after the --dataset list reached the config
    assert 0 < sum(c["num_dets"] for c in ds["classes"]) <= 4 * TOY_IMAGES
    assert all(0.0 <= c["ap"] <= 100.0 for c in ds["classes"])
    assert ds["results"]["AP50"] == ds["mAP"]


def test_missing_weights_file(tiny_model_files, tmp_path):
    cfg, _, _ = tiny_model_files
    missing = str(tmp_path / "nope.pth")
    proc = run_tool("eval.py", "--config-file", cfg, "--weights", missing, "--dataset", "x")
    assert proc.returncode == 2
    assert last_stderr_line(proc) == f"eval.py: error: --weights {missing}: no such file"
    _no_traceback(proc)


def test_unknown_dataset(tiny_model_files, toy_coco):
    cfg, ckpt, _ = tiny_model_files
    json_file, image_root = toy_coco
    proc = run_tool("eval.py", "--config-file", cfg, "--weights", ckpt,
                    "--coco-json", f"toy_eval={json_file}:{image_root}", "--dataset", "toy_evl")
    assert proc.returncode == 2
    line = last_stderr_line(proc)
    assert line.startswith("eval.py: error: unknown dataset 'toy_evl' (not registered; did you mean toy_eval?)")
    _no_traceback(proc)


def test_weights_that_do_not_fit_name_the_keys(tiny_model_files, toy_coco):
    cfg, _, bad_ckpt = tiny_model_files
    json_file, image_root = toy_coco
    proc = run_tool("eval.py", "--config-file", cfg, "--weights", bad_ckpt,
                    "--coco-json", f"toy_eval={json_file}:{image_root}", "--dataset", "toy_eval")
    assert proc.returncode == 2
    line = last_stderr_line(proc)
    assert line.startswith(f"eval.py: error: {bad_ckpt}: 4 weight shape(s) do not fit the config:"), line
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint [4, 32] vs model [3, 32]" in line
    # the usual cause, named with the setting that fixes it (cls_score: classes + background)
    assert line.endswith(". The checkpoint detects 3 classes, the config 2: set MODEL.ROI_HEADS.NUM_CLASSES 3"), line
    _no_traceback(proc)
