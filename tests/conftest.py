"""Importing metaalign_det first applies the compat shims before any test module imports detectron2."""
import metaalign_det  # noqa: F401
