"""ModelEMA: the update rule, copies, checkpoints; in the trainer: updated every step, checkpointed, evaluated,
re-based on MODEL.WEIGHTS, loadable by the tools."""
import pytest
import torch
from torch import nn

from metaalign_det.engine import MetaAlignTrainer
from metaalign_det.engine.ema import ModelEMA
from metaalign_det.evaluation import load_checked_weights
from tests.helpers.configs import quick_cfg
from tests.helpers.training import build_trainer, train


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)  # floating buffers (running stats) + an int64 counter


def _bump(net, by):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(by)
        net.bn.running_mean.add_(by)
        net.bn.num_batches_tracked.add_(3)


def test_update_is_the_exponential_average_of_parameters_and_buffers():
    torch.manual_seed(0)
    net = _Net()
    ema = ModelEMA(net, decay=0.9)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    assert not ema.model.training and all(not p.requires_grad for p in ema.model.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the student is untouched
    _bump(net, 1.0)
    ema.update(net)
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * start[k] + 0.1 * net.state_dict()[k], rtol=0, atol=1e-6, msg=k)
    assert int(ema.model.bn.num_batches_tracked) == 3  # counters are copied, not averaged
    ema.update(net, decay=0.0)  # decay 0: a copy
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in ema.model.state_dict().items())
    assert ema.updates == 2


def test_copy_from_and_state_dict_round_trip():
    torch.manual_seed(0)
    net = _Net()
    ema = ModelEMA(net, decay=0.5)
    _bump(net, 2.0)
    ema.update(net)
    other = ModelEMA(_Net(), decay=0.5)
    assert not other.restored
    other.load_state_dict(ema.state_dict())
    assert other.restored and other.updates == 1
    assert all(torch.equal(v, ema.model.state_dict()[k]) for k, v in other.model.state_dict().items())
    other.copy_from(net)
    assert other.updates == 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in other.model.state_dict().items())


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_decay_out_of_range(decay):
    with pytest.raises(ValueError, match=r"MODEL.EMA.DECAY must be in \[0, 1\)"):
        ModelEMA(_Net(), decay)


def _fair_source_only(data, out, *opts):
    return quick_cfg(data, out, "MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", "0.5",
                     "INPUT.STRONG_AUG.SOURCE", "strong", "DATASETS.TRAIN_TARGET", "()",
                     "MODEL.DA_HEADS.IMG_ENABLED", "False", "MODEL.DA_HEADS.INS_ENABLED", "False",
                     "MODEL.DA_HEADS.CST_WEIGHT", "0.0", *opts)


def test_trainer_updates_checkpoints_and_evaluates_the_ema(tmp_path, monkeypatch):
    cfg = _fair_source_only(tmp_path / "data", tmp_path / "out", "SOLVER.MAX_ITER", "2",
                            "SOLVER.CHECKPOINT_PERIOD", "1000")
    evaluated = []

    def fake_test(cls, cfg, model, evaluators=None):  # records which model the EvalHook evaluates
        evaluated.append(model)
        return {}

    monkeypatch.setattr(MetaAlignTrainer, "test", classmethod(fake_test))
    trainer = build_trainer(cfg)
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    ema = trainer.step_trainer.ema
    assert ema.updates == 2
    assert evaluated == [ema.model]  # the final evaluation ran on the EMA, not the student
    student = trainer.model.state_dict()
    # ema = 0.25 init + 0.25 after step 1 + 0.5 after step 2: neither the student nor the init
    moved = [k for k, v in ema.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, student[k])]
    assert len(moved) > 10 and any(not torch.equal(ema.model.state_dict()[k], init[k]) for k in moved)
    ckpt = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert ckpt["ema"]["updates"] == 2
    for k, v in ema.model.state_dict().items():
        assert torch.equal(ckpt["ema"]["model"][k], v), k
    # the tools load the EMA entry for configs with MODEL.EMA.ENABLED, the student otherwise
    fresh = MetaAlignTrainer.build_model(cfg)
    assert load_checked_weights(fresh, str(tmp_path / "out" / "model_final.pth"), use_ema=True) == []
    assert all(torch.equal(v, ema.model.state_dict()[k]) for k, v in fresh.state_dict().items())
    load_checked_weights(fresh, str(tmp_path / "out" / "model_final.pth"))
    assert all(torch.equal(v, student[k]) for k, v in fresh.state_dict().items())


def test_ema_starts_from_model_weights_and_resumes_from_the_checkpoint(tmp_path):
    first = train(_fair_source_only(tmp_path / "data", tmp_path / "a", "SOLVER.MAX_ITER", "2"))
    weights = str(tmp_path / "a" / "model_final.pth")
    # non-resume load of MODEL.WEIGHTS: the EMA restarts as a copy of the loaded student
    trainer = build_trainer(_fair_source_only(tmp_path / "data", tmp_path / "b", "MODEL.WEIGHTS", weights))
    trainer.resume_or_load(resume=False)
    ema_state = trainer.step_trainer.ema.model.state_dict()
    assert all(torch.equal(v, first.model.state_dict()[k]) for k, v in ema_state.items())
    # resume: the EMA is the checkpoint's, not a copy of the student
    trainer = build_trainer(_fair_source_only(tmp_path / "data", tmp_path / "a", "SOLVER.MAX_ITER", "2"))
    trainer.resume_or_load(resume=True)
    assert trainer.step_trainer.ema.restored
    assert all(torch.equal(v, first.step_trainer.ema.model.state_dict()[k])
               for k, v in trainer.step_trainer.ema.model.state_dict().items())
