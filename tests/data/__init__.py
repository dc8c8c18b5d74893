"""Tests of metaalign_det.data: tiny generated dataset trees, no downloads."""
