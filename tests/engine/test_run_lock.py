"""OUTPUT_DIR/.metaalign.lock without a training (tests/tools/test_train_net_faults.py runs the tool): the cases
the tool tests do not reach -- a reused pid, an unreadable lock, a lock replaced behind the holder's back."""
import json
import os
import socket
import subprocess
import sys

import pytest

from metaalign_det.engine.run_lock import LOCK_NAME, RunLock, RunLockError


def _lock(folder):
    with open(os.path.join(folder, LOCK_NAME), encoding="utf-8") as f:
        return json.load(f)


def test_acquire_writes_the_holder_and_release_deletes_it(tmp_path):
    lock = RunLock(str(tmp_path / "out"), argv=["train_net.py", "--resume"])
    assert lock.acquire() is None
    holder = _lock(tmp_path / "out")
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["argv"] == ["train_net.py", "--resume"] and holder["started"]
    with pytest.raises(RunLockError, match=f"is in use by another run \\(pid {os.getpid()} on host "):
        RunLock(str(tmp_path / "out")).acquire()  # a second holder is refused, even in the same process
    lock.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    with RunLock(str(tmp_path / "out")):  # free again
        assert (tmp_path / "out" / LOCK_NAME).exists()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_our_own_pid_from_an_earlier_process_is_stale(tmp_path):
    """A restarted container gives the new run the pid of the old one: the start time tells them apart."""
    (tmp_path / LOCK_NAME).write_text(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started="then",
                                                      pid_start="1")))
    assert RunLock(str(tmp_path)).acquire().startswith(f"OUTPUT_DIR {tmp_path}: took over the lock of a run that is "
                                                       f"gone (pid {os.getpid()} ")


def test_a_live_pid_that_started_after_the_lock_is_a_reused_pid(tmp_path):
    """The pid of the lock runs, but it is another process than the one that wrote the lock (its start time
    differs): stale, taken over with a notice."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps(dict(pid=child.pid, host=socket.gethostname(),
                                                          started="then", pid_start="1")))
        notice = RunLock(str(tmp_path)).acquire()
        assert notice == f"OUTPUT_DIR {tmp_path}: took over the lock of a run that is gone (pid {child.pid} on host " \
                         f"{socket.gethostname()}, running since then)"
        assert _lock(tmp_path)["pid"] == os.getpid()
    finally:
        child.kill()
        child.wait()


def test_an_unreadable_lock_is_refused_with_the_file_to_delete(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(RunLockError) as e:
        RunLock(str(tmp_path)).acquire()
    assert str(e.value) == (f"OUTPUT_DIR {tmp_path} has a lock file {tmp_path / LOCK_NAME} that cannot be read: if "
                            f"no training runs into this folder, delete that file; else choose another OUTPUT_DIR")
    assert (tmp_path / LOCK_NAME).read_text() == "{not json"


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(str(tmp_path))
    lock.acquire()
    other = dict(_lock(tmp_path), token="someone else's")  # deleted and re-created by hand meanwhile
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    lock.release()
    assert _lock(tmp_path) == other
