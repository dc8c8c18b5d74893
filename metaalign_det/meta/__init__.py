"""The MetaAlign step (pure torch; see :mod:`metaalign_det.meta.step` and DESIGN.md section 4)."""
from .step import DIRECTIONS, HVP_MODES, ORDERS, meta_align_grads, resolve_direction, select_params

__all__ = ["meta_align_grads", "select_params", "resolve_direction", "ORDERS", "DIRECTIONS", "HVP_MODES"]
