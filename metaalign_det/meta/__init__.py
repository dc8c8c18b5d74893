"""The MetaAlign step, pure torch (no detectron2): :func:`meta_align_grads` and its helpers.

Modules: ``step`` (the step, parameter selection, direction schedule), ``hvp`` (Hessian-vector products of the
second-order step), ``grad_stats`` (finite check, norms, grad_cos), ``autodiff`` (loss-gradient helpers),
``buffers`` (parameter-shaped tensors reused across steps).
"""
from .buffers import StepBuffers
from .hvp import HVP_MODES
from .step import DIRECTIONS, ORDERS, meta_align_grads, resolve_direction, select_params

__all__ = ["meta_align_grads", "select_params", "resolve_direction", "ORDERS", "DIRECTIONS", "HVP_MODES",
           "StepBuffers"]
