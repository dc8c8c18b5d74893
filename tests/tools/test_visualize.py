"""tools/visualize.py: prediction panels side by side and training curves, written as PNGs of the
documented size."""
import json

import numpy as np
import pytest
from PIL import Image

from metaalign_det.utils.plots import PANEL_PX, curve_groups, load_metrics, plot_training_curves

from .conftest import TOY_HW, TOY_IMAGES, last_stderr_line, run_tool


def _png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_predictions_of_two_checkpoints_side_by_side(tiny_model_files, toy_coco, tmp_path):
    cfg, ckpt, _ = tiny_model_files
    json_file, image_root = toy_coco
    out = tmp_path / "vis"
    proc = run_tool(
        "visualize.py", "predictions", "--config-file", cfg, "--weights", ckpt, ckpt,
        "--labels", "source-only", "adapted", "--dataset", "toy_vis", "--num-images", "2",
        "--score-threshold", "0.0", "--out-dir", str(out), "--coco-json", f"toy_vis={json_file}:{image_root}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["000_im0.png", "001_im1.png"]
    h, w = TOY_HW
    for f in files:
        img = _png(f)
        assert img.shape == (h, 3 * w, 3)  # ground truth + two checkpoints
        gt, a, b = img[:, :w], img[:, w : 2 * w], img[:, 2 * w :]
        assert not np.array_equal(gt, a)  # different drawings (GT boxes vs predictions and titles)
        assert np.array_equal(a[h // 2 :], b[h // 2 :])  # same checkpoint twice: same predictions below titles


def test_predictions_scaled_without_gt(tiny_model_files, toy_coco, tmp_path):
    cfg, ckpt, _ = tiny_model_files
    json_file, image_root = toy_coco
    out = tmp_path / "vis1"
    proc = run_tool(
        "visualize.py", "predictions", "--config-file", cfg, "--weights", ckpt, "--dataset", "toy_vis",
        "--num-images", "5", "--scale", "1.5", "--no-gt", "--out-dir", str(out),
        "--coco-json", f"toy_vis={json_file}:{image_root}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.glob("*.png"))
    assert len(files) == TOY_IMAGES  # asked for 5, the dataset has 3
    assert _png(files[0]).shape == (int(TOY_HW[0] * 1.5), int(TOY_HW[1] * 1.5), 3)


def _metrics(path, with_ap=True, with_cos=True, iters=12):
    lines = []
    for it in range(0, iters):
        rec = {"iteration": it, "total_loss": 2.0 / (it + 1), "loss_cls": 1.0 / (it + 1), "loss_da_img": 0.69,
               "lr": 0.01}
        if with_cos:
            rec["meta/grad_cos"] = 0.1 * np.sin(it)
        lines.append(json.dumps(rec))
        if with_ap and it % 5 == 4:
            lines.append(json.dumps({"iteration": it, "bbox/AP50": 10.0 + it, "bbox/AP50-car": 5.0}))
    lines.append('{"iteration": 99, "total_lo')  # a line cut by a crash
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("with_ap, with_cos, panels", [(True, True, 3), (True, False, 2), (False, False, 1)])
def test_curve_png_has_one_panel_per_group(tmp_path, with_ap, with_cos, panels):
    records = load_metrics(str(_metrics(tmp_path / "metrics.json", with_ap, with_cos)))
    assert len(records) == 12 + (2 if with_ap else 0)  # the cut line is skipped
    groups = curve_groups(records)
    assert groups["losses"] == ["total_loss", "loss_cls", "loss_da_img"]
    if with_ap:
        assert groups["AP"] == ["bbox/AP50"]  # mean AP, not the per-class curves
    out = tmp_path / "curves.png"
    assert len(plot_training_curves(records, str(out))) == panels
    assert _png(out).shape == (PANEL_PX[1], PANEL_PX[0] * panels, 3)


def test_curves_command(tmp_path):
    _metrics(tmp_path / "metrics.json")
    proc = run_tool("visualize.py", "curves", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _png(tmp_path / "curves.png").shape == (PANEL_PX[1], 3 * PANEL_PX[0], 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_tool("visualize.py", "curves", str(empty))
    assert proc.returncode == 2
    assert last_stderr_line(proc) == (
        f"visualize.py: error: {empty}/metrics.json: not found (expected detectron2's metrics.json in the output dir)"
    )
