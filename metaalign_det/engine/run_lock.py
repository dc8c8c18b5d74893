"""One run per output folder: ``OUTPUT_DIR/.metaalign.lock`` names the process that writes into the folder.

Two trainings into one OUTPUT_DIR would interleave config.yaml, log.txt, metrics.json and the checkpoints. The
lock file is created atomically (``O_CREAT | O_EXCL``: of two processes starting at once exactly one creates
it) and holds JSON ``{"pid", "host", "started", "argv", "token"}``; the holder deletes it when it exits
(normally, on an error or on Ctrl-C). A second run finds it and is refused with one line naming the holder.

A lock left behind by a process that is gone (killed with SIGKILL, a crashed machine) is *stale*: on the same
host, a pid that no longer runs (or runs a process started after the lock: the pid was reused) is taken over
with a one-line notice. A lock written on another host cannot be checked from here: it is refused, and the
message says which file to delete if the user knows that run has ended.

Only the main process of a run holds the lock (launched workers write into the folder under its control).
Taking over a stale lock reads it again just before deleting it, so two runs that both find the same stale
lock do not both proceed: the exclusive create that follows lets one of them win.

Pure standard library; no torch, no detectron2.
"""
import datetime
import json
import os
import socket
import sys
import time
import uuid
from typing import List, Optional, Sequence

__all__ = ["LOCK_NAME", "RunLock", "RunLockError"]

LOCK_NAME = ".metaalign.lock"


class RunLockError(ValueError):
    """OUTPUT_DIR is held by another run (one line: the holder and what to do)."""


def _process_start(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (clock ticks since boot, Linux ``/proc``); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # field 22 (starttime), counted after the command name in parentheses (which may contain spaces)
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: Optional[str]) -> bool:
    """Whether ``pid`` runs on this host and is the process that wrote the lock (same start time, if known)."""
    if pid <= 0:
        return False
    if pid == os.getpid():  # this very process (another RunLock here), or an earlier process that had our pid
        mine = _process_start(pid)  # (a restarted container): only the start time tells them apart
        return start is not None and start == mine
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # runs under another user: alive
    except OSError:
        return True  # cannot tell: treat as alive (refusing is the safe side)
    now = _process_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """``with RunLock(output_dir):`` holds ``output_dir/.metaalign.lock`` for the block.

    :meth:`acquire` raises :class:`RunLockError` when another live run holds the folder; it returns a notice
    (one line) when it took over a stale lock, else None. :meth:`release` deletes the file if it is still ours.
    """

    def __init__(self, output_dir: str, argv: Optional[Sequence[str]] = None) -> None:
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.argv: List[str] = list(sys.argv if argv is None else argv)
        self.token = uuid.uuid4().hex
        self.held = False
        self.notice: Optional[str] = None

    # ---- reading a lock -----------------------------------------------------------------------------------
    def _read(self) -> Optional[dict]:
        """The lock's JSON; None if the file is gone. A file that is still being written (created, not yet
        filled) is read again for up to a second; one that stays unreadable is ``{}``."""
        for _ in range(10):
            try:
                with open(self.path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            try:
                holder = json.loads(text)
                if isinstance(holder, dict):
                    return holder
            except ValueError:
                pass
            time.sleep(0.1)
        return {}

    def _describe(self, holder: dict) -> str:
        return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, running since "
                f"{holder.get('started', '?')}")

    # ---- acquire / release --------------------------------------------------------------------------------
    def _create(self) -> bool:
        payload = json.dumps({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": self.argv,
            "pid_start": _process_start(os.getpid()),
            "token": self.token,
        }) + "\n"
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> Optional[str]:
        if not self.output_dir or "://" in self.output_dir:
            return None  # no folder, or a remote one (no pid / exclusive create there): not locked
        os.makedirs(self.output_dir, exist_ok=True)
        for _ in range(5):  # another run may create / delete the file between our steps
            if self._create():
                self.held = True
                return self.notice
            holder = self._read()
            if holder is None:
                continue  # released meanwhile: try again
            host = holder.get("host")
            pid = holder.get("pid")
            if not holder or not isinstance(pid, int):
                raise RunLockError(
                    f"OUTPUT_DIR {self.output_dir} has a lock file {self.path} that cannot be read: if no training "
                    f"runs into this folder, delete that file; else choose another OUTPUT_DIR"
                )
            if host != socket.gethostname():
                raise RunLockError(
                    f"OUTPUT_DIR {self.output_dir} is in use by another run ({self._describe(holder)}); it runs on "
                    f"another machine, so this one cannot tell whether it is still alive: if you know it has "
                    f"ended, delete {self.path}; else choose another OUTPUT_DIR"
                )
            if _alive(pid, holder.get("pid_start")):
                raise RunLockError(
                    f"OUTPUT_DIR {self.output_dir} is in use by another run ({self._describe(holder)}): wait for "
                    f"it to end or choose another OUTPUT_DIR"
                )
            # stale: delete it if it is still the same file content, then race for the exclusive create
            if self._read() == holder:
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                self.notice = (f"OUTPUT_DIR {self.output_dir}: took over the lock of a run that is gone "
                               f"({self._describe(holder)})")
        raise RunLockError(f"OUTPUT_DIR {self.output_dir}: could not take the lock {self.path} (other runs keep "
                           f"creating it)")

    def release(self) -> None:
        """Delete the lock file if this object holds it (and it still carries our token)."""
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if holder and holder.get("token") == self.token:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
