"""Ctrl-C and SIGTERM that never land in the middle of a write.

:func:`held_interrupts` holds SIGINT / SIGTERM for the duration of a short critical section (a checkpoint and
its ``last_checkpoint`` tag) and delivers a signal that arrived meanwhile once the section is over: Ctrl-C then
stops the run after the checkpoint is complete, instead of inside ``torch.save`` (whose zip writer, interrupted,
fails while unwinding with a RuntimeError that detectron2's training loop logs with a traceback).

:func:`sigterm_as_ctrl_c` makes SIGTERM (``kill``, a job scheduler's preemption) raise KeyboardInterrupt in the
process that installs it, so a run ends as after Ctrl-C (its one line, its lock released) rather than on the spot.

Pure standard library: every layer may use it.
"""
import contextlib
import os
import signal
import threading
from typing import Iterator, List

__all__ = ["held_interrupts", "sigterm_as_ctrl_c"]

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are recorded instead of handled; at its end the handlers in place
    before are restored and the first recorded signal is raised again (``signal.raise_signal``), so the
    previous handler acts on it (KeyboardInterrupt for Ctrl-C) right after the block.

    Only Python-level handlers are swapped, and only in the main thread (the one Python delivers signals to);
    elsewhere, or for a signal that is ignored or handled outside Python, the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []

    def record(signum, frame):
        received.append(signum)

    previous = {}
    for sig in _HELD:
        handler = signal.getsignal(sig)
        if callable(handler) or handler == signal.SIG_DFL:  # SIG_IGN stays ignored; None: set outside Python
            previous[sig] = handler
            signal.signal(sig, record)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in this process (main thread only; a no-op elsewhere).

    A child forked later (a data-loader worker) inherits the handler: there it restores the default action and
    re-sends the signal to itself, so the child still ends at once as the parent's shutdown expects.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
