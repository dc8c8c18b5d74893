"""A user's own small pair through the real tools (issue: own data without surprises): a COCO source with
boxes that do not fit their image, an images-only target holding an EXIF-rotated JPEG, a manifest without a
test split, and the bad inputs that must be one line (exit 2) before anything runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.tools.conftest import REPO, last_stderr_line, run_tool

QUICK = os.path.join(REPO, "configs", "quick_schedules", "da_joint_R18_FPN_synthetic.yaml")
W, H = 96, 72


def _image(rng):
    img = rng.integers(40, 200, size=(H, W, 3), dtype=np.uint8)
    img[20:40, 30:60] = (200, 30, 30)
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def user_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_pair")
    rng = np.random.default_rng(0)
    (root / "src").mkdir()
    images, anns = [], []
    for i in range(4):
        _image(rng).save(root / "src" / f"s{i}.png")
        images.append(dict(id=i + 1, file_name=f"s{i}.png", width=W, height=H))
        anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=1, bbox=[30, 20, 30, 20], area=600, iscrowd=0))
    # image 1: a zero-width box (dropped) and a box reaching past the right edge (clipped to it)
    anns.append(dict(id=len(anns) + 1, image_id=1, category_id=2, bbox=[10, 10, 0, 12], area=0, iscrowd=0))
    anns.append(dict(id=len(anns) + 1, image_id=1, category_id=2, bbox=[80, 30, 40, 20], area=800, iscrowd=0))
    cats = [dict(id=1, name="car"), dict(id=2, name="person")]
    (root / "src.json").write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    tgt = root / "frames"
    tgt.mkdir()
    for i in range(3):
        _image(rng).save(tgt / f"t{i}.jpg")
    # a phone photo: stored 96x72 with EXIF orientation 6 (rotate 90), shown -- and read by detectron2 -- 72x96
    exif = Image.Exif()
    exif[0x0112] = 6
    _image(rng).save(tgt / "phone.jpg", exif=exif)
    manifest = root / "my_pair.yaml"
    manifest.write_text(
        "name: my_pair\nclasses: [car, person]\n"
        f"source: {{type: coco, json: {root / 'src.json'}, image_root: {root / 'src'}}}\n"
        f"target: {{type: images, root: {tgt}}}\n"
    )
    return root, manifest


def _train(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)


def _pair_opts(manifest, out):
    return ["DATASETS.TRAIN", "()", "DATASETS.TRAIN_TARGET", "()", "DATASETS.TEST", "()", "DATASETS.PAIR",
            str(manifest), "MODEL.ROI_HEADS.NUM_CLASSES", "2", "SOLVER.MAX_ITER", "2", "INPUT.MIN_SIZE_TRAIN",
            "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "OUTPUT_DIR", str(out)]


def test_user_pair_trains_with_exif_target_and_degenerate_boxes(user_pair, tmp_path):
    """The pair needs only the manifest (no test split) and the class count; the rotated JPEG is read as
    training reads it; the bad boxes are clipped / dropped and reported once."""
    root, manifest = user_pair
    out = tmp_path / "out"
    proc = _train("--config-file", QUICK, *_pair_opts(manifest, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "Mismatched image shape" not in console and "Traceback" not in console
    box_lines = [ln for ln in console.splitlines() if "clipped to it" in ln]
    assert len(box_lines) == 1, box_lines  # once per dataset, not per image or per load
    assert "1 box(es) reaching outside the image clipped to it" in box_lines[0]
    assert "1 box(es) without 1 px of width and height inside the image dropped" in box_lines[0]
    assert "s0.png" in box_lines[0]  # image id 1
    # a clean console: the start-up line first, no library notices (they are in log.txt)
    assert proc.stderr.splitlines()[0] == "train_net.py: loading torch and detectron2 ..."
    for notice in ("FutureWarning", "torch.jit.script", "torch.meshgrid", "warnings.warn("):
        assert notice not in console, notice
    log = (out / "log.txt").read_text()
    assert "`torch.jit.script` is deprecated" in log and "torch.meshgrid" in log
    cfg = (out / "config.yaml").read_text()
    assert "my_pair_source" in cfg and "my_pair_target" in cfg
    assert (out / "model_final.pth").exists()


def test_exif_sizes_and_verify_images(user_pair):
    root, manifest = user_pair
    from metaalign_det.data.datasets.image_files import load_image_folder

    sizes = {os.path.basename(r["file_name"]): (r["width"], r["height"]) for r in load_image_folder(
        str(root / "frames"))}
    assert sizes["phone.jpg"] == (H, W) and sizes["t0.jpg"] == (W, H)
    proc = run_tool("prepare_datasets.py", "--manifest", str(manifest), "--verify-images")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "all 8 images decode" in proc.stdout
    assert "none (no labelled target test set" in proc.stdout


def test_eval_on_an_unlabelled_set_is_refused(user_pair, tiny_model_files, tmp_path):
    _, manifest = user_pair
    cfg_yaml, ckpt, _ = tiny_model_files
    proc = run_tool("eval.py", "--config-file", cfg_yaml, "--weights", ckpt, "--dataset", "my_pair_target",
                    "DATASETS.PAIR_MANIFESTS", f"('{manifest}',)", "OUTPUT_DIR", str(tmp_path / "e"))
    assert proc.returncode == 2
    assert last_stderr_line(proc).endswith(
        "dataset 'my_pair_target' has no labels (an images-only set, e.g. an unlabelled target): AP needs a "
        "labelled set; evaluate on the pair's labelled test set instead")
    assert "Traceback" not in proc.stderr
    # the trainer refuses it as DATASETS.TEST before training, too
    proc = _train("--config-file", QUICK, *_pair_opts(manifest, tmp_path / "t"), "DATASETS.TEST", "('my_pair_target',)")
    assert proc.returncode == 2 and "DATASETS.TEST: dataset 'my_pair_target' has no labels" in proc.stderr
    assert not (tmp_path / "t" / "model_final.pth").exists()


def _one_error_line(proc):
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def test_misspelt_manifest_key_is_named(user_pair, tmp_path):
    root, _ = user_pair
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: typo_pair\nclasses: [car, person]\n"
                   f"source: {{type: coco, json: {root / 'src.json'}, imageroot: {root / 'src'}}}\n"
                   f"target: {{type: images, root: {root / 'frames'}}}\n")
    line = _one_error_line(_train("--config-file", QUICK, *_pair_opts(bad, tmp_path / "o")))
    assert "missing ['image_root']" in line and "unknown keys ['imageroot' (did you mean 'image_root'?)]" in line
    assert str(bad) in line


def test_yaml_syntax_error_and_missing_base_are_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL:\n  DEVICE: [cpu\n")
    line = _one_error_line(_train("--config-file", str(broken)))
    assert line.startswith(f"error: {broken}: not valid YAML (line ")
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "../no_such_base.yaml"\nMODEL:\n  DEVICE: cpu\n')
    line = _one_error_line(_train("--config-file", str(child)))
    assert line == (f"error: {child}: its _BASE_ '../no_such_base.yaml' "
                    f"({os.path.abspath(tmp_path / '..' / 'no_such_base.yaml')}) does not exist")
