"""benchmarks/profile_run.py splits a run's wall time into phases from its log lines (here: a log in the exact
format detectron2 and the trainer write, two processes -- a resumed run -- with an evaluation each)."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def prof():
    spec = importlib.util.spec_from_file_location("profile_run_under_test",
                                                  os.path.join(REPO, "benchmarks", "profile_run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


LOG = """\
[12/03 10:00:00] detectron2 INFO: Rank of current process: 0. World size: 1
[12/03 10:00:15] detectron2.engine.train_loop INFO: Starting training from iteration 0
[12/03 10:03:00] fvcore.common.checkpoint INFO: Saving checkpoint to out/model_0000199.pth
[12/03 10:03:20] d2.evaluation.evaluator INFO: Total inference time: 0:00:12.000000 (0.12 s / iter)
[12/03 10:03:22] d2.engine.defaults INFO: Evaluation results for val in csv format:
[12/03 10:03:25] detectron2.engine.hooks INFO: Total training time: 0:03:10 (0:00:25 on hooks)
[12/03 10:04:00] detectron2 INFO: Rank of current process: 0. World size: 1
[12/03 10:04:20] detectron2.engine.train_loop INFO: Starting training from iteration 200
[12/03 10:07:20] d2.evaluation.evaluator INFO: Total inference time: 0:00:20 (0.2 s / iter)
[12/03 10:07:30] d2.engine.defaults INFO: Evaluation results for val in csv format:
[12/03 10:07:30] detectron2.engine.hooks INFO: Total training time: 0:03:10 (0:00:40 on hooks)
[12/03 10:07:33] metaalign_det INFO: done
"""


def test_phases_add_up_over_a_resumed_run(prof, tmp_path):
    (tmp_path / "log.txt").write_text(LOG)
    with open(tmp_path / "metrics.json", "w") as f:
        for it in (19, 199, 399):
            f.write(json.dumps({"iteration": it, "data_time": 0.05, "time": 0.9}) + "\n")
    p = prof.profile(str(tmp_path))
    assert p["processes"] == 2 and p["iterations"] == 400
    assert p["start_up"] == 15 + 55  # 10:00:00 -> 10:00:15, then 10:03:25 -> 10:04:20
    assert p["steps"] == (190 - 25) + (190 - 40) and p["hooks"] == 65
    assert p["evaluation"] == pytest.approx(12 + 2 + 20 + 10) and p["evaluation_in_hooks"] == pytest.approx(44)
    assert p["checkpoints_and_hooks"] == pytest.approx(65 - 44)
    assert p["data_wait"] == pytest.approx(0.05 * 400)
    assert p["after_training"] == 3  # the second segment ends with its total line; 3 s of writing after it
    assert p["start_up"] + p["steps"] + p["hooks"] + p["after_training"] == p["logged_wall"] == 453
    table = prof.markdown([p])
    assert "| 400 | 70 | 315 | 20 | 21 | 44 | 3 | - | - |" in table


def test_a_final_test_after_training_is_evaluation_not_after_training(prof, tmp_path):
    """The trainer's final test runs after "Total training time": counted as evaluation, not as other time."""
    log = LOG.splitlines()[:2] + [
        "[12/03 10:03:25] detectron2.engine.hooks INFO: Total training time: 0:03:10 (0:00:03 on hooks)",
        "[12/03 10:03:50] d2.evaluation.evaluator INFO: Total inference time: 0:00:20 (0.2 s / iter)",
        "[12/03 10:03:55] d2.engine.defaults INFO: Evaluation results for test in csv format:",
        "[12/03 10:03:57] metaalign_det INFO: done"]
    (tmp_path / "log.txt").write_text("\n".join(log) + "\n")
    p = prof.profile(str(tmp_path))
    assert p["evaluation"] == pytest.approx(25) and p["evaluation_in_hooks"] == 0
    assert p["after_training"] == 32 and p["after_training_other"] == pytest.approx(7)
    assert p["checkpoints_and_hooks"] == 3


def test_not_a_run_folder_is_one_line_and_exit_2(prof, tmp_path, capsys):
    assert prof.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"profile_run: {tmp_path}: no log.txt (not a training output folder)"
    (tmp_path / "log.txt").write_text(LOG.splitlines()[0] + "\n")
    assert prof.main([str(tmp_path)]) == 2
    assert "did not start or did not finish" in capsys.readouterr().err
