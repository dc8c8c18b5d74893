"""Importing metaalign_det first applies the compat shims before any test module imports detectron2.

Every test under tests/tools/ runs a tool end to end in a subprocess: they carry the ``slow`` marker (set here,
so a new tool test cannot forget it), and ``make test-quick`` (``-m "not slow"``) leaves them out for a
developer's edit loop. ``make test`` and CI run everything.
"""
import os

import pytest

import metaalign_det  # noqa: F401

_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools") + os.sep


def pytest_configure(config):
    # pytest-xdist (`make test` runs `-n auto`): the workers share the cores, so each takes its share of
    # torch's threads instead of all of them (oversubscription makes a 2-core run slower, not faster)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).startswith(_TOOLS):
            item.add_marker(pytest.mark.slow)
