#!/usr/bin/env python3
"""Calibrate the sim -> real pair: train a SOURCE-ONLY detector on ``sim2real_sim_train`` and report AP50 on
``sim2real_sim_val`` (source), ``sim2real_real_val`` (target, every part of the real style) and
``sim2real_<part>_real_val`` for each part alone (texture, shapes, camera, layout, sensor).

Requirement: source AP50 >= 90 and target AP50 <= 0.7 x source AP50 (every part on); the one-part figures
say how much of the gap each part makes. Same detector and options as
``benchmarks/calibrate_demo.py`` (this is its ``--pair sim2real``): R18-FPN, random init, GroupNorm; its own
schedule, batch 2 x 800 iterations at lr 0.01 (the demo pair's batch 4 at lr 0.02 collapses here).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibrate_sim2real.py --threads 1   # ~10 min on one core
    # options: --root DIR, --iters, --batch, --lr, --seed, --norm GN|BN, --fpn-channels, --fc-dim, --threads,
    #          --device cpu|cuda, --out DIR (default output/calibrate_sim2real)

Generates (or reuses) the sim, real and five one-part variants (~30 s once). Results go to
<out>/calibration.json (``more_val_AP50`` / ``more_val_ratio``: the one-part sets); exit status 0 iff the
requirement holds.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from calibrate_demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_pair="sim2real", description=__doc__))
