"""Which detectron2 this test run has, for the few tests that are about one install path.

``REPACK``: the project's pure-Python repack of v0.6 (``make test``): no compiled ``detectron2._C``,
metaalign_det.compat installed its placeholder. ``OFFICIAL``: an official build with a compiled ``_C``
(``make test-d2main`` builds detectron2 main from source). CI runs both lanes, so every test marked with
one of these runs in one of them.
"""
import pytest

import metaalign_det  # noqa: F401  (applies compat)
from metaalign_det import compat

REPACK = any("placeholder" in a for a in compat.applied())
OFFICIAL = not REPACK

repack_only = pytest.mark.skipif(
    OFFICIAL, reason="about the pure-Python v0.6 repack (make test); this run has an official detectron2 build")
official_only = pytest.mark.skipif(
    REPACK, reason="needs an official detectron2 build with compiled _C (make test-d2main); this run has the "
                   "pure-Python v0.6 repack")
