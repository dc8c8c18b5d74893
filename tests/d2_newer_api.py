"""The trainer API of detectron2 builds newer than v0.6, simulated on the installed one (tests only).

Newer ``SimpleTrainer``: ``_data_loader_iter`` is a read-only property that creates the iterator over
``_data_loader_iter_obj`` on first use, and ``reset_data_loader(data_loader_builder)`` replaces the loader;
``__init__`` takes extra keyword options. Newer ``DefaultTrainer``: ``state_dict`` / ``load_state_dict``
include the step trainer's state under ``"_trainer"``. These are the parts metaalign_det.compat handles.
"""
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase


def simulate_newer_detectron2(monkeypatch):
    """Patch SimpleTrainer / DefaultTrainer (undone by ``monkeypatch``); returns the list of
    ``reset_data_loader`` calls (one entry per call) so that a test can see the newer path was taken."""
    resets = []

    def __init__(self, model, data_loader, optimizer, gather_metric_period=1, zero_grad_before_forward=False,
                 async_write_metrics=False):
        TrainerBase.__init__(self)
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None  # created lazily by the property
        self.optimizer = optimizer
        self.gather_metric_period = gather_metric_period
        self.zero_grad_before_forward = zero_grad_before_forward
        self.async_write_metrics = async_write_metrics

    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def reset_data_loader(self, data_loader_builder):
        resets.append(data_loader_builder)
        del self.data_loader
        self.data_loader = data_loader_builder()
        self._data_loader_iter_obj = None

    def state_dict(self):
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    monkeypatch.setattr(SimpleTrainer, "__init__", __init__)
    monkeypatch.setattr(SimpleTrainer, "_data_loader_iter", property(_data_loader_iter), raising=False)
    monkeypatch.setattr(SimpleTrainer, "reset_data_loader", reset_data_loader, raising=False)
    monkeypatch.setattr(DefaultTrainer, "state_dict", state_dict, raising=False)
    monkeypatch.setattr(DefaultTrainer, "load_state_dict", load_state_dict, raising=False)
    return resets
