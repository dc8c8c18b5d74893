"""tools/train_net.py under faults, as a user meets them: an unwritable OUTPUT_DIR, a full disk while saving a
checkpoint, Ctrl-C, ``--num-gpus 2`` without CUDA, a second run into a folder in use, a corrupt checkpoint on
``--resume``. Each runs the real tool in a subprocess and checks the exit status, the one line on stderr (no
traceback), and that nothing was lost (last_checkpoint, the checkpoints, the lock released, a resume works)."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from metaalign_det.engine.run_lock import LOCK_NAME

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "train_net.py")
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "da_joint_R18_FPN_synthetic.yaml")
QUICK = ["DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "2"]  # no evaluation; checkpoints after 1, 3, 5, ...


def _env(datasets_root, **extra):
    return dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1", **extra)


def _cmd(out, *opts, resume=False, prefix=()):
    return [sys.executable, *prefix, TOOL, "--config-file", CONFIG, *(["--resume"] if resume else []), *QUICK,
            *opts, "OUTPUT_DIR", str(out)]


def _run(datasets_root, out, *opts, resume=False, prefix=(), env=None):
    return subprocess.run(_cmd(out, *opts, resume=resume, prefix=prefix), capture_output=True, text=True,
                          cwd=REPO, env=env or _env(datasets_root), timeout=600)


def _one_line(proc, code=2, prefix="error: "):
    """Exit ``code``, no traceback, exactly one line starting with ``prefix`` and it is the last; returns it."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert sum(ln.startswith(prefix) for ln in lines) == 1, proc.stderr[-3000:]
    assert lines[-1].startswith(prefix), proc.stderr[-3000:]
    return lines[-1]


def _communicate_or_dump(proc, timeout=120):
    """``proc.communicate`` after a signal; a process still running after ``timeout`` s gets SIGABRT, which
    (PYTHONFAULTHANDLER=1) prints where each of its threads is stuck: the failure shows that stack."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"still running {timeout} s after the signal; its stacks:\n{stderr[-6000:]}")


def _tag(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return f.read().strip()


def _leftovers(out):
    """Temp files of atomic writes and the run lock: none may remain after a run ends, however it ends."""
    return [n for n in os.listdir(out) if n.endswith(".tmp") or n == LOCK_NAME or n.startswith(".write_test")]


def _resumed_at(out):
    with open(os.path.join(out, "log.txt")) as f:
        text = f.read()
    marker = "Resumed at iteration "
    assert marker in text, text[-2000:]
    return int(text.rsplit(marker, 1)[1].split(";")[0])


# ---- 1. OUTPUT_DIR that cannot be written ------------------------------------------------------------------
def _writable(folder):
    try:
        fd, path = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.remove(path)
    return True


def _read_only_folder(tmp_path):
    """A folder this process cannot write into: chmod 555, or for root (whom that does not stop) sysfs's
    /sys/kernel, which refuses new files to everyone."""
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    for folder in (str(ro), "/sys/kernel"):
        if os.path.isdir(folder) and not _writable(folder):
            return folder
    pytest.fail("no read-only folder on this machine to test with")


@pytest.mark.parametrize("case", ["a_file", "below_a_file", "read_only"])
def test_unwritable_output_dir_is_one_line_before_training(datasets_root, tmp_path, case):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder\n")
    out, expected = {
        "a_file": (str(blocker), f"error: OUTPUT_DIR {blocker}: is a file, expected a folder"),
        "below_a_file": (str(blocker / "run1"), f"error: OUTPUT_DIR {blocker / 'run1'}: {blocker} is a file, "
                                                f"expected a folder"),
        "read_only": (None, "error: OUTPUT_DIR {}: cannot write into the folder ("),
    }[case]
    if case == "read_only":
        out = _read_only_folder(tmp_path)
        expected = expected.format(out)
    proc = _run(datasets_root, out)
    assert _one_line(proc).startswith(expected), proc.stderr[-2000:]
    assert "iter: 0" not in proc.stdout + proc.stderr  # refused before training
    assert blocker.read_text() == "a file, not a folder\n"
    if case == "read_only" and out != "/sys/kernel":
        assert os.listdir(out) == []


# ---- 2. disk full while saving a checkpoint ----------------------------------------------------------------
# The real tool, with torch.save writing through a file that takes 64 KiB and then fails with ENOSPC from the
# second checkpoint on (the first is written completely): what a disk that fills up during training does.
DISK_FULL = r"""
import errno, io, os, runpy, sys
import torch
real_save, calls = torch.save, []
class FillsUp(io.RawIOBase):
    def __init__(self, f):
        self.f, self.n = f, 0
    def writable(self):
        return True
    def write(self, b):
        if self.n + len(b) > 65536:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.n += len(b)
        return self.f.write(b)
def save(obj, f, *a, **k):
    calls.append(1)
    return real_save(obj, FillsUp(f) if len(calls) > 1 else f, *a, **k)
torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_disk_full_while_saving_a_checkpoint(datasets_root, tmp_path):
    out = tmp_path / "out"
    proc = _run(datasets_root, out, "SOLVER.MAX_ITER", "6", prefix=("-c", DISK_FULL))
    line = _one_line(proc)
    assert line == (f"error: cannot save checkpoint {out / 'model_0000003.pth'} (No space left on device); "
                    f"last_checkpoint still names {out / 'model_0000001.pth'}, which is intact: free some space "
                    f"and resume with --resume"), line
    assert _tag(out) == "model_0000001.pth"
    assert sorted(n for n in os.listdir(out) if n.endswith(".pth")) == ["model_0000001.pth"]
    assert _leftovers(out) == []
    # nothing lost: the run resumes from the intact checkpoint
    again = _run(datasets_root, out, "SOLVER.MAX_ITER", "3", resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _resumed_at(out) == 2 and _tag(out) == "model_final.pth"


# ---- 3. Ctrl-C -----------------------------------------------------------------------------------------------
SLOW_LR = ("SOLVER.BASE_LR", "0.001")


def _interrupted_run(datasets_root, out, sig, while_running=lambda proc: None):
    """A 500-iteration run, sent ``sig`` once its first checkpoint exists (after ``while_running(proc)``)."""
    # a small lr: on a loaded machine the run may train for a while before the signal, and must not diverge first
    proc = subprocess.Popen(_cmd(out, "SOLVER.MAX_ITER", "500", *SLOW_LR), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=_env(datasets_root, PYTHONFAULTHANDLER="1"))
    try:
        deadline = time.monotonic() + 300
        while not (out / "last_checkpoint").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.2)
        while_running(proc)
        proc.send_signal(sig)
        stdout, stderr = _communicate_or_dump(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ctrl_c_exits_1_with_one_line_and_resume_continues(datasets_root, tmp_path):
    out = tmp_path / "out"

    def second_run_is_refused(proc):
        """A second training into the same folder while this one runs: refused, the running one's files
        untouched."""
        config_before = (out / "config.yaml").read_text()
        second = _run(datasets_root, out, "SOLVER.MAX_ITER", "2")
        assert _one_line(second).startswith(f"error: OUTPUT_DIR {out} is in use by another run (pid {proc.pid} on "
                                            f"host {socket.gethostname()}, running since "), second.stderr[-2000:]
        assert (out / "config.yaml").read_text() == config_before and proc.poll() is None

    done = _interrupted_run(datasets_root, out, signal.SIGINT, second_run_is_refused)
    line = _one_line(done, code=1, prefix="interrupted at iteration ")
    stopped_at = int(line.split()[3].rstrip(";"))
    tag = _tag(out)
    assert line == (f"interrupted at iteration {stopped_at}; the last checkpoint is {out / tag}: resume with "
                    f"--resume"), line
    saved_at = int(tag[len("model_"):-len(".pth")])
    assert saved_at <= stopped_at <= saved_at + 2  # checkpoints every 2 iterations; the next one was not written
    assert "error:" not in done.stderr and _leftovers(out) == []
    again = _run(datasets_root, out, "SOLVER.MAX_ITER", str(saved_at + 3), *SLOW_LR, resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _resumed_at(out) == saved_at + 1 and _tag(out) == "model_final.pth"


def test_sigterm_ends_the_run_as_ctrl_c(datasets_root, tmp_path):
    """kill / a scheduler's preemption: the same one line and exit status as Ctrl-C, and the run lock released
    (Python's default SIGTERM would end the process on the spot and leave the lock behind)."""
    out = tmp_path / "out"

    def lock_held(proc):
        assert (out / LOCK_NAME).exists()

    done = _interrupted_run(datasets_root, out, signal.SIGTERM, lock_held)
    line = _one_line(done, code=1, prefix="interrupted at iteration ")
    assert line.endswith(f"{out / _tag(out)}: resume with --resume"), line
    assert not (out / LOCK_NAME).exists() and _leftovers(out) == []


# ---- 4. --num-gpus 2 without CUDA --------------------------------------------------------------------------
def test_num_gpus_without_cuda_is_one_line_before_launch(datasets_root, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, TOOL, "--config-file", CONFIG, "--num-gpus", "2", "OUTPUT_DIR", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=_env(datasets_root, CUDA_VISIBLE_DEVICES=""))
    assert _one_line(proc) == ("error: --num-gpus 2 needs 2 CUDA devices, this machine has no usable CUDA device: "
                               "use --num-gpus 1")
    assert not out.exists()  # refused before the config was even read


def test_eval_tool_makes_the_same_num_gpus_check(tiny_model_files, tmp_path):
    config, weights, _ = tiny_model_files
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "eval.py"), "--config-file", config,
                           "--weights", weights, "--num-gpus", "2", "--device", "cuda"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert _one_line(proc, prefix="eval.py: error: ") == (
        "eval.py: error: --num-gpus 2 needs 2 CUDA devices, this machine has no usable CUDA device: use --num-gpus 1")


# ---- 5. one run per OUTPUT_DIR -----------------------------------------------------------------------------
def _write_lock(out, **holder):
    out.mkdir(exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps(dict(started="2026-01-01T00:00:00+00:00", argv=["train_net.py"],
                                                 **holder)))


@pytest.mark.parametrize("holder", ["alive", "other_host"])
def test_output_dir_in_use_is_refused(datasets_root, tmp_path, holder):
    out = tmp_path / "out"
    host = socket.gethostname() if holder == "alive" else "gpu-node-17"
    _write_lock(out, pid=os.getpid(), host=host)  # this test process: alive while the tool runs
    (out / "config.yaml").write_text("the running run's config\n")
    lock_before = (out / LOCK_NAME).read_text()
    line = _one_line(_run(datasets_root, out, "SOLVER.MAX_ITER", "1"))
    who = f"pid {os.getpid()} on host {host}, running since 2026-01-01T00:00:00+00:00"
    if holder == "alive":
        assert line == (f"error: OUTPUT_DIR {out} is in use by another run ({who}): wait for it to end or choose "
                        f"another OUTPUT_DIR"), line
    else:
        assert line == (f"error: OUTPUT_DIR {out} is in use by another run ({who}); it runs on another machine, so "
                        f"this one cannot tell whether it is still alive: if you know it has ended, delete "
                        f"{out / LOCK_NAME}; else choose another OUTPUT_DIR"), line
    # the holder's files are untouched and its lock stays
    assert (out / "config.yaml").read_text() == "the running run's config\n"
    assert (out / LOCK_NAME).read_text() == lock_before
    assert sorted(os.listdir(out)) == sorted(["config.yaml", LOCK_NAME])


def test_stale_lock_of_a_dead_process_is_taken_over(datasets_root, tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(out, pid=dead.pid, host=socket.gethostname())
    proc = _run(datasets_root, out, "SOLVER.MAX_ITER", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notice = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: OUTPUT_DIR")]
    assert notice == [f"warning: OUTPUT_DIR {out}: took over the lock of a run that is gone (pid {dead.pid} on host "
                      f"{socket.gethostname()}, running since 2026-01-01T00:00:00+00:00)"], proc.stderr[-3000:]
    assert _tag(out) == "model_final.pth" and _leftovers(out) == []  # trained, and released its own lock


# ---- 6. --resume with a corrupt newest checkpoint ----------------------------------------------------------
def test_resume_from_a_corrupt_checkpoint_names_the_newest_intact_one(datasets_root, tmp_path):
    out = tmp_path / "out"
    proc = _run(datasets_root, out, "SOLVER.MAX_ITER", "4")  # model_0000001, model_0000003, model_final
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tag(out) == "model_final.pth"
    for name in ("model_final.pth", "model_0000003.pth"):  # cut off half-way (a copy or sync interrupted)
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])
    line = _one_line(_run(datasets_root, out, "SOLVER.MAX_ITER", "4", resume=True))
    final, tag = out / "model_final.pth", out / "last_checkpoint"
    assert line.startswith(f"error: --resume: {final}: cannot be read as a checkpoint ("), line
    assert line.endswith(f"({tag} names it); the newest checkpoint in {out} that reads fine is model_0000001.pth: "
                         f"to resume from it, write model_0000001.pth into {tag} (echo model_0000001.pth > {tag}) "
                         f"and run again with --resume"), line
    assert _tag(out) == "model_final.pth" and _leftovers(out) == []  # no silent fall-back, nothing changed
    # following the instruction resumes from there
    tag.write_text("model_0000001.pth\n")
    again = _run(datasets_root, out, "SOLVER.MAX_ITER", "4", resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _resumed_at(out) == 2 and _tag(out) == "model_final.pth"
