"""The one atomic write (metaalign_det/utils/io.py) and its users: files are complete or absent, and readable by
group and others (mode 0644) whatever the umask -- annotation caches live in shared dataset folders."""
import json
import os
import stat

import pytest
import torch

import metaalign_det  # noqa: F401  (compat before detectron2)
from metaalign_det.data.datasets.coco_cache import load_or_build
from metaalign_det.engine.checkpoint import AtomicDetectionCheckpointer
from metaalign_det.utils.io import atomic_open, atomic_write_bytes, atomic_write_json


@pytest.fixture
def strict_umask():
    """A cluster user's umask 077: plain open() would make owner-only files."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_bytes_and_json_are_0644_and_leave_no_temp_file(tmp_path, strict_umask):
    a = atomic_write_bytes(str(tmp_path / "sub" / "a.bin"), b"abc")
    assert open(a, "rb").read() == b"abc" and _mode(a) == 0o644
    j = atomic_write_json(str(tmp_path / "r.json"), {"ap": float("nan"), "x": [1, 2.5]})
    assert json.load(open(j)) == {"ap": None, "x": [1, 2.5]} and _mode(j) == 0o644
    assert open(j).read().endswith("\n")
    c = atomic_write_json(str(tmp_path / "c.json"), {"k": [1, 2]}, indent=None)
    assert open(c).read() == '{"k":[1,2]}'
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.bin", "c.json", "r.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "keep.json")
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path, binary=False) as f:
            f.write('{"v": 2')  # half written when the writer dies
            raise RuntimeError("boom")
    assert json.load(open(path)) == {"v": 1}
    assert os.listdir(tmp_path) == ["keep.json"]  # the temp file is gone


def test_annotation_cache_is_group_readable(tmp_path, strict_umask):
    cache = str(tmp_path / "metaalign_cache" / "c.json")
    coco = {"images": [{"id": 1}], "annotations": [], "categories": []}
    load_or_build(cache, "kind", [["a.xml", 1, 2]], lambda: dict(coco))
    assert _mode(cache) == 0o644
    assert json.load(open(cache))["metaalign"]["kind"] == "kind"


def test_checkpoint_and_its_tag_are_group_readable(tmp_path, strict_umask):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    saved, tag = tmp_path / "model_0000009.pth", tmp_path / "last_checkpoint"
    assert _mode(saved) == 0o644 and _mode(tag) == 0o644
    assert tag.read_text() == "model_0000009.pth"
    state = torch.load(saved, map_location="cpu")
    assert state["iteration"] == 9 and torch.equal(state["model"]["weight"], model.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
