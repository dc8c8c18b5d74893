"""Where detectron2 is not installed, the parts that do not need it still work, as the README promises:
``from metaalign_det.meta import meta_align_grads`` (pure torch), ``metaalign_det.analysis.pad`` / ``.stats``
and ``metaalign_det.utils.io``; the parts that need detectron2 say how to get it, in one line.

Each check runs in a fresh interpreter in which detectron2 cannot be imported, blocked in the two ways a
missing package shows up: an import-system finder that refuses it, and ``sys.modules["detectron2"] = None``.
"""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BLOCKERS = {
    "finder": """
        import importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "detectron2" or name.startswith("detectron2."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None
        sys.meta_path.insert(0, Block())
    """,
    "sys_modules_none": """
        sys.modules["detectron2"] = None
    """,
}

CHECKS = """
    import torch
    from metaalign_det.meta import meta_align_grads, resolve_direction, select_params

    # a two-parameter problem whose first-order MetaAlign gradient is known in closed form:
    # L_align = a^2 / 2 (gradient a), L_det = (a + b)^2 / 2; theta' = (a - lr * a, b)
    p = {"a": torch.tensor(2.0, dtype=torch.float64), "b": torch.tensor(1.0, dtype=torch.float64)}
    lr = 0.1
    grads, stats = meta_align_grads(p, lambda q: q["a"] ** 2 / 2, lambda q: (q["a"] + q["b"]) ** 2 / 2, lr,
                                    order="first")
    s = (2.0 - lr * 2.0) + 1.0  # a' + b at theta'
    assert abs(grads["a"].item() - (2.0 + s)) < 1e-12 and abs(grads["b"].item() - s) < 1e-12, grads
    assert stats["finite"] and resolve_direction("alternate", 0) == "det_first"
    assert list(select_params({"x.w": torch.zeros(1, requires_grad=True)}, ["^x"])) == ["x.w"]

    from metaalign_det.analysis import proxy_a_distance
    import metaalign_det.analysis.pad, metaalign_det.analysis.stats
    from metaalign_det.analysis.stats import mean_ci
    from metaalign_det.utils.io import atomic_write_json

    # the parts that need detectron2: one clear line each
    import metaalign_det
    for how in ("attribute", "import"):
        try:
            if how == "attribute":
                metaalign_det.modeling
            else:
                import metaalign_det.data
        except ImportError as e:
            assert str(e).startswith("metaalign_det needs detectron2"), str(e)
        else:
            raise AssertionError(how + ": no ImportError without detectron2")
    loaded = sorted(m for m, mod in sys.modules.items()
                    if (m == "detectron2" or m.startswith("detectron2.")) and mod is not None)
    assert not loaded, loaded
    print("NO-D2-OK")
"""


@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_meta_step_and_analysis_without_detectron2(blocker):
    code = "import sys\n" + textwrap.dedent(BLOCKERS[blocker]) + textwrap.dedent(CHECKS)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO-D2-OK" in proc.stdout


def test_package_import_with_detectron2_registers_everything():
    """With detectron2 (this environment), ``import metaalign_det`` alone applies compat first and fills the
    registries, as before."""
    code = textwrap.dedent("""
        import sys
        import metaalign_det
        from metaalign_det import compat
        assert "detectron2._C" in sys.modules and compat.applied() is not None
        from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
        from detectron2.data import DatasetCatalog
        assert "DomainAdaptiveRCNN" in META_ARCH_REGISTRY and "build_vgg16_backbone" in BACKBONE_REGISTRY
        assert "synthetic_foggy_val" in DatasetCatalog.list()
        assert callable(metaalign_det.add_metaalign_config) and metaalign_det.evaluation.DetectionAPEvaluator
        print("D2-OK")
    """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "D2-OK" in proc.stdout
