"""tools/train_net.py on the quick schedules, as a user runs it (subprocess, the generated demo pair)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = os.path.join(REPO, "configs", "quick_schedules")


def _train_net(datasets_root, *args):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_metaalign_first_order_trains_evaluates_and_reloads(datasets_root, tmp_path):
    out = str(tmp_path / "fo")
    proc = _train_net(datasets_root, "--config-file", os.path.join(QUICK, "metaalign_fo_R18_FPN_synthetic.yaml"),
                      "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(out)
    keys = set().union(*rows)
    assert {"loss_da_img", "loss_da_ins", "loss_cls", "meta/grad_cos", "meta/inner_lr"} <= keys
    # alternate starts with the detection loss as meta-train, as the official loop does
    assert [r["meta/direction_is_align_first"] for r in rows if "meta/inner_lr" in r] == [0.0, 1.0, 0.0]
    with open(os.path.join(out, "inference", "ap_synthetic_foggy_val.json")) as f:
        report = json.load(f)
    assert report["num_images"] == 100 and [c["name"] for c in report["classes"]] == ["car", "person", "bus"]
    assert "AP50 (coco101, IoU=0.50) on synthetic_foggy_val" in proc.stdout + proc.stderr
    # --eval-only on the written weights gives the same AP
    again = _train_net(datasets_root, "--config-file", os.path.join(QUICK, "metaalign_fo_R18_FPN_synthetic.yaml"),
                       "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                       "OUTPUT_DIR", str(tmp_path / "eval"))
    assert again.returncode == 0, again.stderr[-3000:]
    with open(tmp_path / "eval" / "inference" / "ap_synthetic_foggy_val.json") as f:
        assert json.load(f)["mAP"] == pytest.approx(report["mAP"], abs=1e-9)


def test_teacher_metaalign_trains_evaluates_the_teacher_and_reloads_it(datasets_root, tmp_path):
    """Mean teacher + MetaAlign through the command line: burn-in, pseudo-label losses, teacher metrics; the
    evaluation is the teacher's (EMA), and --eval-only on the checkpoint evaluates the same teacher."""
    config = os.path.join(QUICK, "teacher_metaalign_fo_R18_FPN_synthetic.yaml")
    out = str(tmp_path / "teacher")
    proc = _train_net(datasets_root, "--config-file", config, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["iteration"]: r for r in _metrics(out) if "loss_cls" in r}
    assert rows[0]["teacher/burn_in"] == 1.0 and "loss_pseudo_cls" not in rows[0]
    for it in (1, 2):
        for k in ("loss_pseudo_cls", "loss_pseudo_rpn_cls", "loss_da_img", "meta/grad_cos",
                  "teacher/pseudo_per_image", "teacher/agreement"):
            assert k in rows[it], (it, k)
    with open(os.path.join(out, "inference", "ap_synthetic_foggy_val.json")) as f:
        report = json.load(f)
    again = _train_net(datasets_root, "--config-file", config, "--eval-only", "MODEL.WEIGHTS",
                       os.path.join(out, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert again.returncode == 0, again.stderr[-3000:]
    with open(tmp_path / "eval" / "inference" / "ap_synthetic_foggy_val.json") as f:
        assert json.load(f)["mAP"] == pytest.approx(report["mAP"], abs=1e-9)
    proc = _train_net(datasets_root, "--config-file", config, "MODEL.EMA.ENABLED", "False",
                      "OUTPUT_DIR", str(tmp_path / "bad"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: TEACHER.ENABLED needs MODEL.EMA.ENABLED True: the "
                                                     "teacher is the EMA of the student")


@pytest.mark.parametrize("config,opts", [
    ("metaalign_so_R18_FPN_synthetic.yaml", ["SOLVER.MAX_ITER", "1"]),
    ("da_joint_R18_C4_synthetic.yaml", []),
    ("da_joint_VGG16_synthetic.yaml", ["META.MODE", "first_order"]),
    ("source_only_R18_FPN_synthetic.yaml", []),
])
def test_quick_schedules_train(datasets_root, tmp_path, config, opts):
    out = str(tmp_path / "out")
    proc = _train_net(datasets_root, "--config-file", os.path.join(QUICK, config), "SOLVER.MAX_ITER", "2",
                      "DATASETS.TEST", "()", "OUTPUT_DIR", out, *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = set().union(*_metrics(out))
    assert "loss_cls" in keys and os.path.exists(os.path.join(out, "model_final.pth"))
    da = "source_only" not in config
    assert ("loss_da_img" in keys) == da and ("loss_da_ins" in keys) == da
    if "metaalign" in config or "META.MODE" in opts:
        assert "meta/grad_cos" in keys


def test_metaalign_swda_quick_schedule_trains(datasets_root, tmp_path):
    """SWDA (local + global discriminators, both contexts) inside the official first-order MetaAlign step:
    the four domain terms are logged as loss_da_local / loss_da_global, and the checkpoint holds both heads."""
    out = str(tmp_path / "swda")
    proc = _train_net(datasets_root, "--config-file", os.path.join(QUICK, "metaalign_swda_R18_FPN_synthetic.yaml"),
                      "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in _metrics(out) if "loss_cls" in r]
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        assert {"loss_da_local", "loss_da_global", "meta/grad_cos", "da/local_acc_source",
                "da/global_acc_target"} <= set(r)
        assert "loss_da_img" not in r and "loss_da_ins" not in r
    assert [r["meta/direction_is_align_first"] for r in rows] == [0.0, 1.0]


def test_swda_with_the_instance_head_and_the_mean_teacher_trains(datasets_root, tmp_path):
    """SWDA combines with DA-Faster's instance head and with the mean teacher (the EMA teacher labels with
    the context too)."""
    out = str(tmp_path / "swda_teacher")
    proc = _train_net(datasets_root, "--config-file", os.path.join(QUICK, "metaalign_swda_R18_FPN_synthetic.yaml"),
                      "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", out,
                      "MODEL.DA_HEADS.INS_ENABLED", "True", "MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", "0.9",
                      "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05", "TEACHER.ENABLED", "True",
                      "TEACHER.BURN_IN_ITERS", "1", "TEACHER.SCORE_THRESH", "0.3", "INPUT.STRONG_AUG.TARGET", "True",
                      "TEST.DETECTIONS_PER_IMAGE", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["iteration"]: r for r in _metrics(out) if "loss_cls" in r}
    for k in ("loss_da_local", "loss_da_global", "loss_da_ins", "loss_pseudo_cls", "meta/grad_cos"):
        assert k in rows[1], k  # iteration 0 is the burn-in


def test_bad_input_is_one_error_line(datasets_root, tmp_path):
    proc = _train_net(datasets_root, "--config-file", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: --config-file {tmp_path / 'nope.yaml'}: no such file"
    proc = _train_net(datasets_root, "--config-file", os.path.join(QUICK, "da_joint_R18_FPN_synthetic.yaml"),
                      "DATASETS.TRAIN_TARGET", "('foggy_typo',)", "OUTPUT_DIR", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: DATASETS.TRAIN_TARGET: dataset 'foggy_typo' is not registered")


def test_console_shows_the_run_and_log_txt_the_dumps(datasets_root, tmp_path):
    """No ANSI colour codes and no config / environment / model dump on the console (the first iteration
    is visible at once); OUTPUT_DIR/log.txt and config.yaml keep the full dumps. An integer for a float key
    (META.INNER_LR_SCALE 10) is taken as a float."""
    out = tmp_path / "out"
    proc = _train_net(datasets_root, "--config-file", os.path.join(QUICK, "da_joint_R18_FPN_synthetic.yaml"),
                      "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()", "META.INNER_LR_SCALE", "10",
                      "OUTPUT_DIR", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "\x1b[" not in console
    for dump in ("Running with full config", "Environment info", "Contents of args.config_file", "(backbone): FPN(",
                 "(roi_heads): StandardROIHeads("):
        assert dump not in console, dump
    assert "iter: 0  total_loss:" in console and "Model: DomainAdaptiveRCNN, " in console
    assert len(proc.stdout.splitlines()) < 60, proc.stdout  # was ~580 lines for one iteration
    log = (out / "log.txt").read_text()
    for dump in ("Running with full config:", "Environment info:", "(backbone): FPN(", "iter: 0  total_loss:"):
        assert dump in log, dump
    assert "INNER_LR_SCALE: 10.0" in (out / "config.yaml").read_text()


def _cuda_less_env():
    return {"CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, whatever the machine has


@pytest.mark.parametrize("case", ["unknown_test_set", "missing_test_split", "ap_metric", "missing_weights",
                                  "gpu_config_on_cpu", "diverging_lr", "no_target_images", "checkpoint_period_0"])
def test_bad_inputs_fail_before_training_with_one_line(datasets_root, tmp_path, case):
    quick = os.path.join(QUICK, "da_joint_R18_FPN_synthetic.yaml")
    out = tmp_path / "out"
    config, opts, env, expected = {
        "unknown_test_set": (quick, ["DATASETS.TEST", "('synthetic_foggy_vall',)"], {},
                             "error: DATASETS.TEST: dataset 'synthetic_foggy_vall' is not registered"),
        # a builtin name whose files are not under DETECTRON2_DATASETS (only the synthetic pair is there)
        "missing_test_split": (quick, ["DATASETS.TEST", "('cityscapes_car_val',)"], {},
                               "error: DATASETS.TEST: dataset 'cityscapes_car_val' is registered but its files "
                               "are missing: "),
        "ap_metric": (quick, ["TEST.AP_METRIC", "voc2007"], {}, "error: TEST.AP_METRIC must be one of "),
        "missing_weights": (quick, ["MODEL.WEIGHTS", str(tmp_path / "no_such.pth")], {},
                            f"error: MODEL.WEIGHTS {tmp_path / 'no_such.pth'}: no such file"),
        "gpu_config_on_cpu": (os.path.join(REPO, "configs", "cityscapes_foggy", "da_faster_R50_FPN.yaml"), [],
                              _cuda_less_env(), "error: MODEL.DEVICE is 'cuda' but this machine has no usable "
                                                "CUDA device: add `MODEL.DEVICE cpu`"),
        "diverging_lr": (quick, ["SOLVER.BASE_LR", "1000", "SOLVER.WARMUP_ITERS", "0",
                                 "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_ITER", "3"], {},
                         "error: training diverged at iteration 0: "),
        # detectron2 would stop with an AssertionError / ZeroDivisionError traceback
        "no_target_images": (quick, ["SOLVER.TARGET_IMS_PER_BATCH", "0"], {},
                             "error: SOLVER.TARGET_IMS_PER_BATCH is 0: expected the number of images per step "
                             "over all processes, >= 1"),
        "checkpoint_period_0": (quick, ["SOLVER.CHECKPOINT_PERIOD", "0"], {},
                                "error: SOLVER.CHECKPOINT_PERIOD is 0: expected an integer >= 1"),
    }[case]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="2", **env)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
                           *opts, "OUTPUT_DIR", str(out)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), last
    assert sum(ln.startswith("error:") for ln in proc.stderr.splitlines()) == 1
    assert "iter: 0  total_loss" not in proc.stdout or case == "diverging_lr"  # failed before training
    assert not list(out.glob("*.pth"))
