"""Ctrl-C / SIGTERM held across a write (metaalign_det.utils.interrupts): a signal that arrives inside the block
is acted on right after it, with the handler that was in place; SIGTERM as Ctrl-C in the process that asks for
it and the default action in a child forked later. Real signals, sent to this process (or a child)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import metaalign_det  # noqa: F401  (compat before detectron2)
from metaalign_det.engine.checkpoint import AtomicDetectionCheckpointer
from metaalign_det.utils.interrupts import held_interrupts


def test_a_signal_inside_the_block_is_raised_after_it_with_the_previous_handler():
    before = signal.getsignal(signal.SIGINT)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupts():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal, inside the block")  # not interrupted here
        steps.append("after the block")  # never reached: the signal is raised as the block ends
    assert steps == ["after the signal, inside the block"]
    assert signal.getsignal(signal.SIGINT) is before


def test_without_a_signal_nothing_happens_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with held_interrupts():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]  # held inside
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_exception_in_the_block_restores_the_handlers_and_propagates():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(ValueError):
        with held_interrupts():
            raise ValueError("boom")
    assert signal.getsignal(signal.SIGINT) is before


class _InterruptWhenPickled:
    """Sends Ctrl-C to this process while torch.save is in the middle of writing the archive."""

    def __reduce__(self):
        signal.raise_signal(signal.SIGINT)
        return (int, (7,))


def test_ctrl_c_during_a_checkpoint_save_stops_after_the_checkpoint_is_complete(tmp_path):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000003", iteration=3, interrupter=_InterruptWhenPickled())
    # complete and tagged; no temp file (without the hold the signal lands inside torch.save: nothing written)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    data = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    assert data["iteration"] == 3 and data["interrupter"] == 7
    assert torch.equal(data["model"]["weight"], model.weight.detach())
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


_SIGTERM_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from metaalign_det.utils.interrupts import sigterm_as_ctrl_c
    sigterm_as_ctrl_c()
    pid = os.fork()
    if pid == 0:  # a child forked after the handler was installed (as a data-loader worker is)
        signal.raise_signal(signal.SIGTERM)
        os._exit(0)  # not reached: the default action ends the child
    _, status = os.waitpid(pid, 0)
    child = "killed by SIGTERM" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM else status
    try:
        signal.raise_signal(signal.SIGTERM)
        print("parent: not interrupted", child)
    except KeyboardInterrupt:
        print("parent: KeyboardInterrupt;", "child:", child)
""")


def test_sigterm_is_ctrl_c_in_the_process_and_the_default_in_a_forked_child():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_SCRIPT.format(repo=repo)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "parent: KeyboardInterrupt; child: killed by SIGTERM", proc.stdout
