"""MetaAlignTrainer end to end on a toy pair: metrics, modes, directions, resume, AMP, errors."""
import json
import os

import pytest
import torch
from detectron2.engine import HookBase, hooks

from metaalign_det.engine import MetaAlignTrainer
from metaalign_det.engine.checkpoint import AtomicDetectionCheckpointer
from metaalign_det.engine.printer import TrainingMetricPrinter
from metaalign_det.engine.trainer import launcher_interrupted_message
from tests.d2_newer_api import simulate_newer_detectron2
from tests.helpers.configs import quick_cfg
from tests.helpers.training import build_trainer, one_step, train
from tests.toy_data import register_toy


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_joint_da_writes_alignment_losses(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "SOLVER.MAX_ITER", "2",
                    "META.JOINT_GRAD_COS_PERIOD", "1")
    train(cfg)
    rows = _metrics(tmp_path / "out")
    keys = set().union(*rows)
    for k in ("loss_da_img", "loss_da_ins", "loss_da_cst", "loss_cls", "loss_box_reg", "loss_rpn_cls",
              "meta/grad_cos", "meta/align_grad_norm", "meta/det_grad_norm", "meta/inner_lr"):
        assert k in keys, k
    assert os.path.exists(tmp_path / "out" / "model_final.pth")
    assert all(abs(r["meta/grad_cos"]) <= 1 for r in rows if "meta/grad_cos" in r)


@pytest.mark.parametrize("mode", ["first_order", "second_order"])
def test_meta_modes_train_and_log(tmp_path, mode):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "META.MODE", mode, "SOLVER.MAX_ITER", "2",
                    "META.DIRECTION", "alternate")
    trainer = train(cfg)
    rows = [r for r in _metrics(tmp_path / "out") if "meta/inner_lr" in r]
    assert len(rows) == 2
    for r in rows:
        for k in ("meta/grad_cos", "meta/align_grad_norm", "meta/det_grad_norm", "loss_da_img"):
            assert k in r and r[k] == r[k], (k, r)
        # alpha = INNER_LR_SCALE x the lr of that step
        assert r["meta/inner_lr"] == pytest.approx(10.0 * r["lr"], rel=1e-6)
    # "alternate" (official schedule): det_first on even iterations, align_first on odd ones
    assert [r["meta/direction_is_align_first"] for r in rows] == [0.0, 1.0]
    if mode == "second_order":  # roi_align has no double backward: the auto HVP fell back and remembers
        assert set(trainer.step_trainer._hvp_known.values()) == {"finite_difference"}


def test_meta_step_changes_the_update(tmp_path):
    """first_order with alpha > 0 differs from the joint step; with alpha = 0 it equals it exactly."""
    results = {}
    for name, opts in {"joint": ["META.MODE", "none"],
                       "fo0": ["META.MODE", "first_order", "META.INNER_LR_SCALE", "0.0"],
                       "fo": ["META.MODE", "first_order", "META.INNER_LR_SCALE", "100000.0"]}.items():
        cfg = quick_cfg(tmp_path / "data", tmp_path / name, *opts, "META.JOINT_GRAD_COS_PERIOD", "0")
        trainer = build_trainer(cfg)
        one_step(trainer)
        results[name] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    diff = lambda a, b: max((results[a][k] - results[b][k]).abs().max().item() for k in results[a])  # noqa
    assert diff("joint", "fo0") < 1e-6
    assert diff("joint", "fo") > 1e-6


class _Crash(HookBase):
    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("mode", ["none", "first_order"])
def test_kill_and_resume_gives_same_weights(tmp_path, mode):
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "META.MODE", mode,
            "META.JOINT_GRAD_COS_PERIOD", "0"]
    straight = train(quick_cfg(tmp_path / "data", tmp_path / "a", *opts))
    cfg = quick_cfg(tmp_path / "data", tmp_path / "b", *opts)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, hooks=[_Crash(2)])
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not list((tmp_path / "b").glob("*.tmp"))  # atomic writes leave no temp files behind
    resumed = train(cfg, resume=True)
    assert resumed.start_iter == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("mode", ["none", "first_order", "second_order"])
def test_bf16_autocast_on_cpu(tmp_path, mode):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "SOLVER.AMP.ENABLED", "True",
                    "SOLVER.AMP.DTYPE", "bfloat16", "META.MODE", mode)
    trainer = MetaAlignTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    storage = one_step(trainer)
    latest = {k: v[0] for k, v in storage.latest().items()}
    for k in ("loss_cls", "loss_da_img", "loss_da_ins"):
        assert torch.isfinite(torch.tensor(latest[k])), (k, latest[k])
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "SOLVER.AMP.ENABLED", "True")
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE 'float16' needs a CUDA device"):
        MetaAlignTrainer(cfg)


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "META.MODE", "first_order")
    trainer = MetaAlignTrainer(cfg)
    trainer.checkpointer.save("model_last_good")
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if "da_img" in n or "img" in n)
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    snapshot = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="non-finite MetaAlign gradient at iteration 0.*intact"):
        one_step(trainer)
    after = trainer.model.state_dict()
    assert all(torch.equal(snapshot[k], after[k]) or k == name for k in snapshot)  # no optimizer step
    ckpt = torch.load(tmp_path / "out" / "model_last_good.pth", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_meta_params_restrict_fast_weights(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "META.MODE", "first_order",
                    "META.PARAMS", "['roi_heads[.]']")
    trainer = MetaAlignTrainer(cfg)
    fast = trainer.step_trainer.fast
    assert fast and all(n.startswith("roi_heads.") for n in fast)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    one_step(trainer)
    # every trainable parameter still gets updated (backbone included), not only the fast ones
    moved = {k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)}
    assert any(k.startswith("backbone.") for k in moved) and any(k.startswith("roi_heads.") for k in moved)


@pytest.mark.parametrize("opts,match", [
    (["DATASETS.TRAIN_TARGET", "()"], "DATASETS.TRAIN_TARGET is empty but MODEL.DA_HEADS is enabled"),
    (["DATASETS.TRAIN_TARGET", "('no_such_set',)"], "DATASETS.TRAIN_TARGET: dataset 'no_such_set' is not registered"),
    (["MODEL.ROI_HEADS.NUM_CLASSES", "5"], "NUM_CLASSES is 5 but DATASETS.TRAIN"),
    (["META.MODE", "third_order"], "META.MODE must be one of"),
    (["META.MODE", "first_order", "MODEL.DA_HEADS.IMG_ENABLED", "False", "MODEL.DA_HEADS.INS_ENABLED", "False"],
     "needs an alignment loss"),
    (["META.PARAMS", "['nothing_matches_this']"], "nothing_matches_this"),
    (["DATASETS.TEST", "('no_such_test',)"], "DATASETS.TEST: dataset 'no_such_test' is not registered"),
    (["TEST.AP_METRIC", "coco"], "TEST.AP_METRIC must be one of coco101, voc07, voc12, got 'coco'"),
    (["TEST.AP_IOU", "1.5"], r"TEST.AP_IOU must be in \(0, 1\], got 1.5"),
    (["MODEL.DEVICE", "gpu0"], "MODEL.DEVICE 'gpu0' is not a torch device"),
])
def test_bad_config_is_one_clear_error(tmp_path, opts, match):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", *opts)
    with pytest.raises(ValueError, match=match):
        MetaAlignTrainer(cfg)


def test_unknown_image_feature_is_a_clear_error(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "MODEL.DA_HEADS.IMG_IN_FEATURES", "['res9']")
    with pytest.raises((ValueError, KeyError), match="res9"):
        MetaAlignTrainer(cfg)


def test_target_classes_must_match_source(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register("toy_other_classes", lambda: [])
    MetadataCatalog.get("toy_other_classes").thing_classes = ["car", "bus"]
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "DATASETS.TRAIN_TARGET", "('toy_other_classes',)")
    with pytest.raises(ValueError, match=r"class lists differ: DATASETS.TRAIN .* DATASETS.TRAIN_TARGET .*'car', 'bus'"):
        MetaAlignTrainer(cfg)


def test_discriminator_accuracies_and_grad_cos_reach_metrics_and_console(tmp_path, caplog):
    """da/* (who is winning the adversarial game) in metrics.json, and on the console line with grad_cos."""
    import logging

    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "META.MODE", "first_order", "SOLVER.MAX_ITER", "2",
                    "SOLVER.LOG_PERIOD", "1")
    with caplog.at_level(logging.INFO, logger="metaalign_det.train"):
        train(cfg)
    rows = [r for r in _metrics(tmp_path / "out") if "meta/inner_lr" in r]
    assert len(rows) == 2
    for r in rows:
        for k in ("da/img_acc_source", "da/img_acc_target", "da/ins_acc_source", "da/ins_acc_target"):
            assert 0.0 <= r[k] <= 1.0, (k, r)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "metaalign_det.train"]
    assert lines and all("iter:" in ln for ln in lines)
    assert "grad_cos: " in lines[-1] and "da img acc src/tgt: " in lines[-1] and "da ins acc src/tgt: " in lines[-1]
    assert "loss_da_img" in lines[-1] and "\x1b[" not in lines[-1]


def test_source_only_run_logs_no_discriminator_accuracy(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "SOLVER.MAX_ITER", "2", "DATASETS.TRAIN_TARGET", "()",
                    "MODEL.DA_HEADS.IMG_ENABLED", "False", "MODEL.DA_HEADS.INS_ENABLED", "False",
                    "MODEL.DA_HEADS.CST_WEIGHT", "0.0", "MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    train(cfg)
    assert not any(k.startswith("da/") for r in _metrics(tmp_path / "out") for k in r)


# ---- detectron2 versions: the same run on a newer official build's trainer API (simulated) -------------


def test_kill_and_resume_on_the_newer_detectron2_api(tmp_path, monkeypatch):
    """Newer builds: read-only ``_data_loader_iter`` + ``reset_data_loader``, and DefaultTrainer checkpoints
    ``_trainer`` itself. Resuming there continues the uninterrupted (v0.6) run exactly."""
    opts = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "META.JOINT_GRAD_COS_PERIOD", "0"]
    straight = train(quick_cfg(tmp_path / "data", tmp_path / "a", *opts))
    resets = simulate_newer_detectron2(monkeypatch)
    cfg = quick_cfg(tmp_path / "data", tmp_path / "b", *opts)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, hooks=[_Crash(1)])
    state = torch.load(tmp_path / "b" / "model_0000000.pth", weights_only=False)["trainer"]
    assert {"optimizer", "rng", "step_seed_base"} <= set(state["_trainer"]) and "data_seeds" in state
    resumed = train(cfg, resume=True)
    assert resumed.start_iter == 1 and len(resets) == 1  # the data streams were replaced the newer way
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_log_period_is_the_writers_period(tmp_path):
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "SOLVER.LOG_PERIOD", "3")
    trainer = MetaAlignTrainer(cfg)
    writers = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicWriter)]
    assert len(writers) == 1 and writers[0]._period == 3
    assert sum(isinstance(w, TrainingMetricPrinter) for w in writers[0]._writers) == 1


# ---- divergence never reaches a checkpoint -------------------------------------------------------------


def test_diverging_update_stops_before_its_checkpoint(tmp_path):
    """lr 1000: the gradients are finite, but the first update multiplies the weights' norm ~200x. Before,
    model_0000000.pth (|w| ~4e3) and model_0000001.pth (|w| ~4e19) were written, then a forward failed."""
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "SOLVER.BASE_LR", "1000", "SOLVER.WARMUP_ITERS", "0",
                    "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_ITER", "3")
    with pytest.raises(FloatingPointError) as info:
        train(cfg)
    msg = str(info.value)
    assert msg.startswith("training diverged at iteration 0: one update grew the trainable weights' norm")
    assert "\n" not in msg and "last checkpoint is intact" in msg and "SOLVER.BASE_LR" in msg
    assert not list((tmp_path / "out").glob("*.pth")) and not (tmp_path / "out" / "last_checkpoint").exists()


def test_non_finite_weights_after_the_update_stop_training(tmp_path):
    # finite gradients x lr 1e38 -> inf weights; the norm-growth test is off, the finiteness test remains
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "SOLVER.BASE_LR", "1e38", "SOLVER.WARMUP_ITERS", "0",
                    "SOLVER.CHECKPOINT_PERIOD", "1")
    trainer = build_trainer(cfg)
    trainer.step_trainer.max_weight_norm_growth = None
    with pytest.raises(FloatingPointError, match="diverged at iteration 0: the update made the weights non-finite"):
        trainer.train()
    assert not list((tmp_path / "out").glob("*.pth"))


def test_checkpointer_never_saves_non_finite_weights_and_names_unreadable_files(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("good")
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"not saving checkpoint bad.pth: 1 model tensor\(s\) are "
                                                 r"non-finite \(weight\)"):
        checkpointer.save("bad")
    assert not (tmp_path / "bad.pth").exists() and (tmp_path / "last_checkpoint").read_text() == "good.pth"
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pth: cannot be read as a checkpoint \(UnpicklingError"):
        checkpointer.load(str(tmp_path / "junk.pth"))


# ---- bad inputs fail before the first iteration, one line each -------------------------------------------


def test_missing_test_split_fails_at_construction(tmp_path):
    name = register_toy("toy_gone_val", str(tmp_path / "gone_val"))
    os.remove(tmp_path / "gone_val" / "ann.json")  # registered, but its files are gone
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "DATASETS.TEST", f"('{name}',)")
    with pytest.raises(FileNotFoundError, match=r"DATASETS.TEST: dataset 'toy_gone_val' is registered but its "
                                                r"files are missing: .*ann.json"):
        MetaAlignTrainer(cfg)


@pytest.mark.parametrize("kind", ["missing", "directory", "not_a_checkpoint"])
def test_bad_model_weights_fail_before_training(tmp_path, kind):
    path = tmp_path / "weights.pth"
    if kind == "directory":
        path.mkdir()
    elif kind == "not_a_checkpoint":
        path.write_text("not a checkpoint")
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "MODEL.WEIGHTS", str(path))
    trainer = MetaAlignTrainer(cfg)
    error, match = {
        "missing": (FileNotFoundError, r"MODEL.WEIGHTS .*weights.pth: no such file"),
        "directory": (ValueError, r"MODEL.WEIGHTS .*weights.pth: is a directory"),
        "not_a_checkpoint": (ValueError, r"weights.pth: cannot be read as a checkpoint"),
    }[kind]
    with pytest.raises(error, match=match):
        trainer.resume_or_load(resume=False)


def test_cuda_config_without_cuda_suggests_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU-only machine reports
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "MODEL.DEVICE", "cuda")
    with pytest.raises(ValueError, match=r"MODEL.DEVICE is 'cuda' but this machine has no usable CUDA device: "
                                         r"add `MODEL.DEVICE cpu`"):
        MetaAlignTrainer(cfg)


def test_source_without_boxes_is_one_clear_error(tmp_path):
    name = register_toy("toy_no_boxes", str(tmp_path / "no_boxes"), n_boxes=0)
    cfg = quick_cfg(tmp_path / "data", tmp_path / "out", "DATASETS.TRAIN", f"('{name}',)")
    with pytest.raises(ValueError, match=r"DATASETS.TRAIN \['toy_no_boxes'\]: none of its 4 images has a box "
                                         r"and DATALOADER.FILTER_EMPTY_ANNOTATIONS=True drops every image"):
        MetaAlignTrainer(cfg)


def test_the_launcher_of_several_processes_names_the_checkpoint_last_checkpoint_names(tmp_path):
    """Ctrl-C in ``train_net.py --num-gpus N``'s launcher: it does not know the iteration, it names what --resume
    continues from (the single-process line's second half)."""
    assert launcher_interrupted_message(str(tmp_path)) == (
        "interrupted; no checkpoint was written yet: run again without --resume to start from the beginning")
    ckpt = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    ckpt.save("model_0000199")
    ckpt.save("model_0000399")
    assert launcher_interrupted_message(str(tmp_path)) == (
        f"interrupted; the last checkpoint is {tmp_path / 'model_0000399.pth'}: resume with --resume")
