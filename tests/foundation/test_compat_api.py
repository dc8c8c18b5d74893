"""The version-dependent detectron2 API behind metaalign_det.compat, exercised on the installed build (the v0.6
repack in ``make test``, detectron2 main in ``make test-d2main``): the same assertions hold on both."""
import itertools
import os

import pytest
import torch

import metaalign_det  # noqa: F401
from metaalign_det import compat

# isort: split
from detectron2.data.samplers import TrainingSampler
from detectron2.utils.events import EventStorage
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from metaalign_det.data.paired_loader import ResumableTrainingSampler
from metaalign_det.engine.checkpoint import AtomicDetectionCheckpointer


def test_put_scalars_at_records_the_given_iteration():
    with EventStorage(start_iter=7) as storage:
        compat.put_scalars_at(storage, 3, loss=1.5, other=2.0)
        compat.put_scalars_at(storage, 4, loss=0.5)
        compat.put_scalars_at(storage, 4, smoothing_hint=False, flag=1.0)
        assert storage.iter == 7  # the storage's own iteration is untouched
        assert storage.history("loss").values() == [(1.5, 3), (0.5, 4)]
        assert storage.history("other").values() == [(2.0, 3)]
        assert storage.latest()["loss"] == (0.5, 4)
        assert storage.smoothing_hints()["flag"] is False and storage.smoothing_hints()["loss"] is True


@pytest.mark.parametrize("shuffle", [True, False])
def test_resumable_sampler_is_detectron2s_stream(shuffle):
    ours = ResumableTrainingSampler(11, shuffle=shuffle, seed=5)
    theirs = TrainingSampler(11, shuffle=shuffle, seed=5)
    head = list(itertools.islice(iter(theirs), 40))
    assert list(itertools.islice(iter(ours), 40)) == head  # same seed, same indices
    skipped = ResumableTrainingSampler(11, shuffle=shuffle, seed=5, skip=13)
    assert list(itertools.islice(iter(skipped), 27)) == head[13:]  # resume = the stream minus what was consumed
    assert isinstance(ResumableTrainingSampler(3).seed, int)  # None: one shared random seed
    with pytest.raises(ValueError, match="positive dataset size"):
        ResumableTrainingSampler(0)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_read_checkpoint_goes_through_load_and_loads_nothing(tmp_path):
    written = _model()
    AtomicDetectionCheckpointer(written, str(tmp_path)).save("model_final", iteration=9)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    ckpt = compat.read_checkpoint(fresh, str(tmp_path / "model_final.pth"))
    assert ckpt["iteration"] == 9 and set(ckpt["model"]) == set(written.state_dict())
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # read only

    class Halved(compat.CheckpointerBase):  # the hook sees the dict before detectron2 loads it
        def prepare_checkpoint(self, checkpoint):
            return dict(checkpoint, model={k: v / 2 for k, v in checkpoint["model"].items()})

    Halved(fresh).load(str(tmp_path / "model_final.pth"), checkpointables=[])
    assert all(torch.allclose(fresh.state_dict()[k], v / 2) for k, v in written.state_dict().items())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, content):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    with pytest.raises(compat.CheckpointReadError) as info:
        compat.read_checkpoint(_model(), str(bad))
    msg = str(info.value)
    assert msg.startswith(f"{bad}: cannot be read as a checkpoint (") and "\n" not in msg


class _FolderHandler(PathHandler):
    """A real iopath handler serving ``metaalign-test://`` from a local folder (stands in for a remote store):
    it can only be written through ``copy_from_local`` / ``open``, as a remote one."""

    PREFIX = "metaalign-test://"
    root = None
    uploads = []

    def _local(self, path):
        return os.path.join(self.root, path[len(self.PREFIX):])

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        return self._local(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(self._local(path), mode)

    def _copy_from_local(self, local_path, dst_path, overwrite=False, **kwargs):
        type(self).uploads.append(dst_path)
        with open(local_path, "rb") as src, open(self._local(dst_path), "wb") as dst:
            dst.write(src.read())
        return True

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _isdir(self, path, **kwargs):
        return os.path.isdir(self._local(path))

    def _ls(self, path, **kwargs):
        return os.listdir(self._local(path))

    def _mkdirs(self, path, **kwargs):
        os.makedirs(self._local(path), exist_ok=True)

    def _rm(self, path, **kwargs):
        os.remove(self._local(path))


_HANDLER = _FolderHandler()
PathManager.register_handler(_HANDLER)


def test_checkpoints_to_a_remote_output_dir_go_through_pathmanager(tmp_path, monkeypatch):
    monkeypatch.setattr(_FolderHandler, "root", str(tmp_path))
    monkeypatch.setattr(_FolderHandler, "uploads", [])
    model = _model()
    ckpt = AtomicDetectionCheckpointer(model, "metaalign-test://run")
    ckpt.save("model_0000003", iteration=3)
    assert _FolderHandler.uploads == ["metaalign-test://run/model_0000003.pth", "metaalign-test://run/last_checkpoint"]
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    reader = AtomicDetectionCheckpointer(other, "metaalign-test://run")
    assert reader.has_checkpoint() and reader.get_checkpoint_file() == "metaalign-test://run/model_0000003.pth"
    assert reader.resume_or_load("", resume=True)["iteration"] == 3
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())
