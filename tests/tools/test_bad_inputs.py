"""Bad files and values given to tools/eval.py, tools/visualize.py and tools/analyze_alignment.py end with the
promised one line naming what is wrong and exit status 2 -- never a traceback.

Cases: a truncated --coco-json file, an empty split (a COCO JSON without images), a bad metric value, and a
weights file that is not a checkpoint (random bytes)."""
import json

import numpy as np
import pytest

from .conftest import last_stderr_line, run_tool


@pytest.fixture(scope="module")
def bad_files(toy_coco, tmp_path_factory):
    """Paths: a truncated copy of the toy COCO JSON, an empty split of it, random bytes named .pth."""
    json_file, image_root = toy_coco
    root = tmp_path_factory.mktemp("bad_inputs")
    text = open(json_file).read()
    truncated = root / "truncated.json"
    truncated.write_text(text[: len(text) // 2])  # a download or copy cut off half-way
    empty = root / "empty.json"
    empty.write_text(json.dumps(dict(json.loads(text), images=[], annotations=[])))
    garbage = root / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"truncated": str(truncated), "empty": str(empty), "garbage": str(garbage), "image_root": image_root,
            "good": json_file}


def _one_line_exit_2(proc, tool):
    """Status 2, no traceback, and the last stderr line is the tool's one error line; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = last_stderr_line(proc)
    assert line.startswith(f"{tool}: error: "), proc.stderr[-3000:]
    return line[len(f"{tool}: error: "):]


# ---- tools/eval.py ----------------------------------------------------------------------------------------
def _eval(cfg, weights, coco_spec, *extra):
    return run_tool("eval.py", "--config-file", cfg, "--weights", weights, "--coco-json", coco_spec,
                    "--dataset", "bad_in", *extra)


def test_eval_truncated_coco_json(tiny_model_files, bad_files):
    cfg, ckpt, _ = tiny_model_files
    proc = _eval(cfg, ckpt, f"bad_in={bad_files['truncated']}:{bad_files['image_root']}")
    msg = _one_line_exit_2(proc, "eval.py")
    assert msg.startswith(f"dataset 'bad_in': {bad_files['truncated']} is not a readable COCO instances JSON "
                          f"(JSONDecodeError: "), msg


def test_eval_empty_split(tiny_model_files, bad_files):
    cfg, ckpt, _ = tiny_model_files
    proc = _eval(cfg, ckpt, f"bad_in={bad_files['empty']}:{bad_files['image_root']}")
    assert _one_line_exit_2(proc, "eval.py") == "dataset 'bad_in' has no images (empty split)"


def test_eval_bad_metric_in_the_config(tiny_model_files, bad_files):
    cfg, ckpt, _ = tiny_model_files
    proc = _eval(cfg, ckpt, f"bad_in={bad_files['good']}:{bad_files['image_root']}", "TEST.AP_METRIC", "voc2010")
    assert _one_line_exit_2(proc, "eval.py") == "TEST.AP_METRIC 'voc2010': expected one of coco101, voc07, voc12"


def test_eval_bad_iou_in_the_config(tiny_model_files, bad_files):
    cfg, ckpt, _ = tiny_model_files
    proc = _eval(cfg, ckpt, f"bad_in={bad_files['good']}:{bad_files['image_root']}", "TEST.AP_IOU", "1.5")
    assert _one_line_exit_2(proc, "eval.py") == "TEST.AP_IOU 1.5: expected a value in (0, 1]"


def test_eval_bad_metric_option(tiny_model_files, bad_files):
    cfg, ckpt, _ = tiny_model_files
    proc = _eval(cfg, ckpt, f"bad_in={bad_files['good']}:{bad_files['image_root']}", "--metric", "voc2010")
    msg = _one_line_exit_2(proc, "eval.py")
    assert msg.startswith("argument --metric: invalid choice: 'voc2010'"), msg


def test_eval_garbage_weights(tiny_model_files, bad_files):
    cfg, _, _ = tiny_model_files
    proc = _eval(cfg, bad_files["garbage"], f"bad_in={bad_files['good']}:{bad_files['image_root']}")
    msg = _one_line_exit_2(proc, "eval.py")
    assert msg.startswith(f"{bad_files['garbage']}: cannot be read as a checkpoint ("), msg


# ---- tools/visualize.py -----------------------------------------------------------------------------------
def _visualize(cfg, weights, coco_spec, out_dir, *extra):
    return run_tool("visualize.py", "predictions", "--config-file", cfg, "--weights", weights, "--coco-json",
                    coco_spec, "--dataset", "bad_in", "--out-dir", str(out_dir), *extra)


def test_visualize_truncated_coco_json(tiny_model_files, bad_files, tmp_path):
    cfg, ckpt, _ = tiny_model_files
    proc = _visualize(cfg, ckpt, f"bad_in={bad_files['truncated']}:{bad_files['image_root']}", tmp_path)
    msg = _one_line_exit_2(proc, "visualize.py")
    assert msg.startswith(f"dataset 'bad_in': {bad_files['truncated']} is not a readable COCO instances JSON"), msg
    assert not list(tmp_path.iterdir())


def test_visualize_empty_split(tiny_model_files, bad_files, tmp_path):
    cfg, ckpt, _ = tiny_model_files
    proc = _visualize(cfg, ckpt, f"bad_in={bad_files['empty']}:{bad_files['image_root']}", tmp_path)
    assert _one_line_exit_2(proc, "visualize.py") == "dataset 'bad_in' has no images (empty split)"


def test_visualize_garbage_weights(tiny_model_files, bad_files, tmp_path):
    cfg, _, _ = tiny_model_files
    proc = _visualize(cfg, bad_files["garbage"], f"bad_in={bad_files['good']}:{bad_files['image_root']}", tmp_path)
    msg = _one_line_exit_2(proc, "visualize.py")
    assert msg.startswith(f"{bad_files['garbage']}: cannot be read as a checkpoint ("), msg


def test_visualize_bad_scale(tiny_model_files, bad_files, tmp_path):
    cfg, ckpt, _ = tiny_model_files
    proc = _visualize(cfg, ckpt, f"bad_in={bad_files['good']}:{bad_files['image_root']}", tmp_path, "--scale", "0")
    assert _one_line_exit_2(proc, "visualize.py") == "--scale 0.0: expected a value > 0"


# ---- tools/analyze_alignment.py ---------------------------------------------------------------------------
def _analyze(cfg, weights, target_json, image_root, good_json):
    return run_tool("analyze_alignment.py", "--config-file", cfg, "--weights", weights,
                    "--coco-json", f"bad_src={good_json}:{image_root}",
                    "--coco-json", f"bad_in={target_json}:{image_root}",
                    "--source-dataset", "bad_src", "--target-dataset", "bad_in", "--grad-batches", "0")


def test_analyze_truncated_coco_json(tiny_model_files, bad_files):
    cfg, ckpt, _ = tiny_model_files
    proc = _analyze(cfg, ckpt, bad_files["truncated"], bad_files["image_root"], bad_files["good"])
    msg = _one_line_exit_2(proc, "analyze_alignment.py")
    assert msg.startswith(f"dataset 'bad_in': {bad_files['truncated']} is not a readable COCO instances JSON"), msg


def test_analyze_empty_split(tiny_model_files, bad_files):
    cfg, ckpt, _ = tiny_model_files
    proc = _analyze(cfg, ckpt, bad_files["empty"], bad_files["image_root"], bad_files["good"])
    assert _one_line_exit_2(proc, "analyze_alignment.py") == "dataset 'bad_in' has no images (empty split)"


def test_analyze_garbage_weights(tiny_model_files, bad_files):
    cfg, _, _ = tiny_model_files
    proc = _analyze(cfg, bad_files["garbage"], bad_files["good"], bad_files["image_root"], bad_files["good"])
    msg = _one_line_exit_2(proc, "analyze_alignment.py")
    assert msg.startswith(f"{bad_files['garbage']}: cannot be read as a checkpoint ("), msg
