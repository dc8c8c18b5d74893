"""tools/prepare_datasets.py: what is missing (with archive names), conversion, counts per split and class."""
import dataclasses
import importlib.util
import os

import pytest

import metaalign_det  # noqa: F401
from metaalign_det.data.datasets import builtin
from metaalign_det.data.datasets import sim2real as S2
from metaalign_det.data.datasets import synthetic as S
from metaalign_det.data.datasets.cityscapes_foggy import gtfine_cache_file

from . import fake_trees as ft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_SIM2REAL = dataclasses.replace(S2.DEFAULT_SIM2REAL_PARAMS, n_train=1, n_val=1, n_dev=1, n_test=1)


@pytest.fixture
def tool():
    path = os.path.join(REPO, "tools", "prepare_datasets.py")
    spec = importlib.util.spec_from_file_location("prepare_datasets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    builtin.register_all_builtin(overwrite=True)  # the tool re-binds the builtin names to its --root


def test_reports_missing_trees_with_archive_names(tool, tmp_path, capsys):
    rc = tool.main(["cityscapes", "foggy", "sim10k", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com" in out
    assert "leftImg8bit_trainvaltest_foggy.zip" in out
    assert "repro_10k_images.tgz and repro_10k_annotations.tgz" in out
    assert out.count("NOT READY") == 3


def test_partial_tree_names_each_missing_folder(tool, tmp_path, capsys):
    ft.make_cityscapes(str(tmp_path), foggy=False)
    import shutil

    shutil.rmtree(tmp_path / "cityscapes" / "gtFine" / "val")
    rc = tool.main(["cityscapes", "foggy", "--root", str(tmp_path), "--check"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"missing {tmp_path}/cityscapes/gtFine/val/ (from gtFine_trainvaltest.zip" in out
    assert f"missing {tmp_path}/cityscapes/leftImg8bit_foggy/train/ (from leftImg8bit_trainvaltest_foggy.zip" in out
    assert "note: " in out and "the full release has 2,975" in out


def test_converts_once_and_counts_per_split_and_class(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "DEFAULT_PARAMS",
                        dataclasses.replace(S.DEFAULT_PARAMS, n_train=2, n_val=1, n_dev=1, n_test=1))
    monkeypatch.setattr(S2, "DEFAULT_SIM2REAL_PARAMS", TINY_SIM2REAL)
    ft.make_cityscapes(str(tmp_path))
    ft.make_sim10k(str(tmp_path))
    rc = tool.main(["--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    cs = str(tmp_path / "cityscapes")
    assert os.path.isfile(gtfine_cache_file(cs, "train")) and os.path.isfile(gtfine_cache_file(cs, "val"))
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "images=" in line}
    assert ("images=3      no-object=1     person=3  rider=1  car=2  truck=1  bus=0  train=0  motorcycle=0  "
            "bicycle=1  crowd=1") in lines["cityscapes_det_train"]
    assert "images=9 " in lines["foggy_cityscapes_det_train_allbeta"]
    assert "images=2      no-object=0     car=2" in lines["cityscapes_car_val"]
    assert "images=3      no-object=1     car=3  difficult=1" in lines["sim10k_car_trainval"]
    assert "images=1 " in lines["synthetic_foggy_val"]
    assert "images=1 " in lines["sim2real_real_dev"] and "images=1 " in lines["sim2real_sim_test"]
    assert not any(n.startswith("sim2real_camera") for n in lines)  # one-part variants only when asked for
    assert "all requested datasets are ready" in out


def test_make_list_writes_the_sim10k_split(tool, tmp_path, capsys):
    ft.make_sim10k(str(tmp_path))
    list_file = tmp_path / "sim10k" / "VOC2012" / "ImageSets" / "Main" / "trainval.txt"
    list_file.unlink()
    assert tool.main(["sim10k", "--root", str(tmp_path)]) == 1
    assert "--make-list" in capsys.readouterr().out
    assert tool.main(["sim10k", "--root", str(tmp_path), "--make-list"]) == 0
    assert list_file.read_text().split() == sorted(ft.SIM_IMAGES)


def test_check_says_whether_the_demo_pair_is_generated(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "DEFAULT_PARAMS",
                        dataclasses.replace(S.DEFAULT_PARAMS, n_train=1, n_val=1, n_dev=1, n_test=1))
    assert tool.main(["synthetic", "--check", "--root", str(tmp_path)]) == 0
    assert "not generated yet" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "synthetic_pair")
    assert tool.main(["synthetic", "--root", str(tmp_path)]) == 0
    capsys.readouterr()
    assert tool.main(["synthetic", "--check", "--root", str(tmp_path)]) == 0
    assert "generated, stamp up to date" in capsys.readouterr().out


def test_a_root_that_cannot_take_the_generated_pair_is_one_line_exit_2(tool, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    root = str(blocker / "datasets")
    assert tool.main(["synthetic", "--root", root]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"prepare_datasets.py: error: --root {root}: {blocker} is a file, expected a folder: remove it "
                   f"or choose another --root"]
    monkeypatch.setenv("DETECTRON2_DATASETS", root)  # the root from the environment: named as such
    assert tool.main(["sim2real"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"prepare_datasets.py: error: DETECTRON2_DATASETS {root}: ")
    assert tool.main(["synthetic", "--check", "--root", root]) == 0  # --check writes nothing: not refused


def _table(out):
    return {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "images=" in line}


def test_sim2real_is_generated_checked_and_cleaned(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S2, "DEFAULT_SIM2REAL_PARAMS", TINY_SIM2REAL)
    root = str(tmp_path)
    assert tool.main(["sim2real", "--check", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "  sim           not generated yet" in out and "  real          not generated yet" in out
    assert not os.path.exists(tmp_path / "sim2real_pair")
    assert tool.main(["sim2real", "--root", root]) == 0
    lines = _table(capsys.readouterr().out)
    assert sorted(lines) == sorted(n for n, (_, part, _) in builtin.SIM2REAL_SPLITS.items() if part is None)
    assert "images=1 " in lines["sim2real_real_dev"] and "car=" in lines["sim2real_real_dev"]
    assert sorted(os.listdir(tmp_path / "sim2real_pair")) == ["real", "sim"]
    assert tool.main(["sim2real", "--root", root, "--sim2real-parts", "sensor,camera"]) == 0
    lines = _table(capsys.readouterr().out)
    assert "sim2real_camera_real_test" in lines and "sim2real_sensor_real_train" in lines
    assert not any(n.startswith("sim2real_layout") for n in lines)
    assert sorted(os.listdir(tmp_path / "sim2real_pair")) == ["real", "real_camera", "real_sensor", "sim"]
    assert tool.main(["sim2real", "--check", "--root", root, "--sim2real-parts", "all"]) == 0
    out = capsys.readouterr().out
    assert "  real_camera   generated, stamp up to date" in out and "  real_layout   not generated yet" in out
    # a changed strength makes the variants that have the part stale; --rebuild drops every variant
    monkeypatch.setattr(S2, "DEFAULT_SIM2REAL_PARAMS", dataclasses.replace(
        TINY_SIM2REAL, real=dataclasses.replace(TINY_SIM2REAL.real, blur_sigma=1.0)))
    assert tool.main(["sim2real", "--check", "--root", root, "--sim2real-parts", "camera,sensor"]) == 0
    out = capsys.readouterr().out
    assert "  sim           generated" in out and "  real_camera   generated" in out
    assert "  real          not generated yet" in out and "  real_sensor   not generated yet" in out
    assert tool.main(["sim2real", "--root", root, "--rebuild"]) == 0
    assert sorted(os.listdir(tmp_path / "sim2real_pair")) == ["real", "sim"]
    capsys.readouterr()
    for bad in (["sim2real", "--sim2real-parts", "fog"], ["synthetic", "--sim2real-parts", "camera"]):
        with pytest.raises(SystemExit) as e:  # argparse: one usage line, status 2
            tool.main(bad + ["--root", root])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--sim2real-parts: 'fog' is not a part; expected a comma-separated list of texture, shapes, camera, " \
           "layout, sensor, or all" in err
    assert "--sim2real-parts prepares sim2real variants" in err


def test_preview_alone_writes_only_the_picture(tool, tmp_path, capsys):
    import cv2

    png = tmp_path / "pictures" / "pair.png"
    os.makedirs(png.parent)
    assert tool.main(["--preview", str(png), "--root", str(tmp_path / "data")]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    scene = S2.DEFAULT_SIM2REAL_PARAMS.scene
    assert img.shape == (7 * scene.height, 64 + 2 * scene.width, 3)
    assert not os.path.exists(tmp_path / "data")  # nothing generated, nothing checked


# ----------------------------------------------------------------------------------------------------------
# --manifest: a user's own pair, checked like the builtin datasets; --verify-images


def _own_pair(root, tmp_path, name="own_pair", **over):
    """root/{kitti COCO source, target/ images folder, voc/ test} and a manifest for them; returns its path."""
    import yaml

    for i in range(2):
        ft.write_image(os.path.join(root, "kitti", "images", f"{i:06d}.png"), 40, 24, seed=i)
    ft.write_coco(os.path.join(root, "kitti", "train.json"),
                  images=[{"id": i, "file_name": f"{i:06d}.png", "height": 24, "width": 40} for i in range(2)],
                  categories=[(1, "Car"), (2, "Pedestrian")],
                  annotations=[{"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                               {"id": 2, "image_id": 0, "category_id": 2, "bbox": [20, 2, 3, 9], "iscrowd": 0},
                               {"id": 3, "image_id": 0, "category_id": 1, "bbox": [5, 5, 4, 4], "iscrowd": 0}])
    for k in range(3):
        ft.write_image(os.path.join(root, "target", f"seq{k % 2}", f"{k:04d}.jpg"), 40, 24, seed=10 + k)
    ft.make_voc(os.path.join(root, "voc"))
    m = {"name": name, "classes": ["car"], "class_map": {"Car": "car", "Pedestrian": None},
         "source": {"type": "coco", "json": "${DETECTRON2_DATASETS}/kitti/train.json",
                    "image_root": "${DETECTRON2_DATASETS}/kitti/images"},
         "target": {"type": "images", "root": "${DETECTRON2_DATASETS}/target"},
         "test": {"type": "voc", "root": "${DETECTRON2_DATASETS}/voc",
                  "class_map": {"motorbike": None, "person": None}}}
    m.update(over)
    path = str(tmp_path / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(m, f)
    return path


@pytest.fixture
def pairs_cleanup():
    from metaalign_det.data import unregister_domain_pair

    yield
    for name in ("own_pair", "bad_pair"):
        unregister_domain_pair(name)


def test_manifest_pair_is_checked_and_counted(tool, tmp_path, capsys, monkeypatch, pairs_cleanup):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    root = str(tmp_path / "data")
    path = _own_pair(root, tmp_path)
    rc = tool.main(["--manifest", path, "--root", root])  # --root is what ${DETECTRON2_DATASETS} means
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "DETECTRON2_DATASETS" not in os.environ  # set for the registration only
    assert f"== pair own_pair ({path})" in out and "== cityscapes" not in out  # only what was asked for
    assert f"  source  COCO {root}/kitti/train.json (images under {root}/kitti/images)\n" in out
    assert f"  target  unlabelled images under {root}/target (*.jpg, *.jpeg, *.png)" in out
    assert f"  test    VOC {root}/voc (split trainval, JPEGImages/*.jpg)" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "images=" in line}
    assert "images=2      no-object=1     car=2" in lines["own_pair_source"]  # Pedestrian dropped by the map
    assert lines["own_pair_target"].split()[1:] == ["images=3", "unlabelled", "(images", "only)"]
    assert "images=3      no-object=1     car=3  difficult=1" in lines["own_pair_test"]
    assert "all requested datasets are ready" in out


def test_manifest_missing_files_are_named(tool, tmp_path, capsys, pairs_cleanup):
    root = str(tmp_path / "data")
    path = _own_pair(root, tmp_path, target={"type": "images", "root": "${DETECTRON2_DATASETS}/no_target"},
                     test={"type": "voc", "root": "${DETECTRON2_DATASETS}/no_voc"})
    os.remove(os.path.join(root, "kitti", "train.json"))
    for extra in ([], ["--check"]):
        rc = tool.main(["--manifest", path, "--root", root] + extra)
        out = capsys.readouterr().out
        assert rc == 1 and "  NOT READY:" in out
        assert f"   - source: missing annotation file {root}/kitti/train.json" in out
        assert f"   - target: missing image folder {root}/no_target" in out
        assert f"   - test: missing VOC root {root}/no_voc\n" in out  # and nothing under it
    # files present but an image listed and absent: the load error names it
    from metaalign_det.data import unregister_domain_pair

    unregister_domain_pair("own_pair")  # (a new process in real use: the definition changed)
    path = _own_pair(root, tmp_path)
    os.remove(os.path.join(root, "kitti", "images", "000001.png"))
    rc = tool.main(["--manifest", path, "--root", root])
    out = capsys.readouterr().out
    assert rc == 1
    assert (f"  ERROR (own_pair_source): pair manifest {path}: source: 1 of 2 listed images are absent, e.g. "
            f"{root}/kitti/images/000001.png") in out
    # the other sets are still loaded and counted: every problem in one run
    assert "own_pair_target                        images=3      unlabelled (images only)" in out
    assert "own_pair_test " in out and "own_pair_source " not in out


@pytest.mark.parametrize("over, message", [
    ({"clases": ["car"]}, r"pair manifest .*bad_pair.yaml: unknown keys \['clases' \(did you mean 'classes'\?\)\]"),
    ({"source": {"type": "images", "root": "x"}}, r"pair manifest .*bad_pair.yaml: source: an 'images' set has no "
                                                   r"labels; only the target may be unlabelled"),
])
def test_bad_manifest_is_one_error_line_and_status_2(tool, tmp_path, capsys, pairs_cleanup, over, message):
    import re

    root = str(tmp_path / "data")
    path = _own_pair(root, tmp_path, name="bad_pair", **over)
    assert tool.main(["--manifest", path, "--root", root]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err
    assert tool.main(["--manifest", str(tmp_path / "nope.yaml"), "--root", root]) == 2
    assert capsys.readouterr().err.strip() == f"error: pair manifest {tmp_path}/nope.yaml does not exist"


def test_verify_images_lists_every_undecodable_file(tool, tmp_path, capsys, pairs_cleanup):
    from .test_image_files import damaged_in_the_middle_png, truncated, write

    root = str(tmp_path / "data")
    path = _own_pair(root, tmp_path)
    cut = write(os.path.join(root, "target", "seq0", "cut.jpg"), truncated("JPEG", 3))  # found when loading
    mid = write(os.path.join(root, "target", "seq1", "mid.png"), damaged_in_the_middle_png(4))  # only by decoding
    rc = tool.main(["--manifest", path, "--root", root])
    out = capsys.readouterr().out
    assert rc == 0, out  # loading skips the cut image (one warning) and says so; the damaged one goes unseen
    assert f"note: 1 unreadable image(s) skipped at load, first {cut} (cut short" in out
    assert "images=4      unlabelled" in out and mid not in out
    rc = tool.main(["--manifest", path, "--root", root, "--verify-images", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    # 10 = 2 source + 4 target + 3 test images decoded + the one skipped at load
    assert ("  UNREADABLE: 2 of 10 images (1 skipped at load: bad header or cut short; 1 fail a full decode):"
            in out)
    assert f"   - {cut} (cut short (no JPEG end marker; decoding fails with OSError: image file is truncated" in out
    assert f"   - {mid} (OSError: " in out
    assert "some requested datasets are not ready" in out


def test_verify_images_on_a_builtin_dataset(tool, tmp_path, capsys):
    ft.make_sim10k(str(tmp_path))
    assert tool.main(["sim10k", "--root", str(tmp_path), "--verify-images"]) == 0
    assert "  all 3 images decode" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # argparse: one usage line, status 2
        tool.main(["sim10k", "--root", str(tmp_path), "--verify-images", "--check"])
    assert e.value.code == 2


def test_decode_all_in_a_process_pool(tool, tmp_path):
    from .test_image_files import image_bytes, truncated, write

    paths = [write(str(tmp_path / f"{i:03d}.jpg"), truncated("JPEG", i) if i in (5, 66) else image_bytes("JPEG", i))
             for i in range(70)]
    bad = tool.decode_all(paths, workers=2)
    assert sorted(bad) == [paths[5], paths[66]]
    assert all(r.startswith("OSError: image file is truncated") for r in bad.values())
