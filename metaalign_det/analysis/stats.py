"""Small-sample statistics for seed studies: mean with a Student-t confidence interval, and paired
differences (same seed = same data order and head init across methods). Pure Python, no SciPy."""
import math
import statistics
from typing import Dict, Mapping, Optional, Sequence

__all__ = ["t_quantile_975", "mean_ci", "paired_difference", "seeds_for_half_width"]

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (standard tables, 3 decimals)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t_{0.975} with ``df`` >= 1 degrees of freedom (table up to 30; beyond, the normal 1.96 plus the
    first-order correction 2.4/df, within 0.002 of the exact value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.959964 + 2.4 / df


def mean_ci(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean, sample std and the 95% t confidence interval of the mean (half-width ``t * s / sqrt(n)``).

    Returns a dict ``{"n", "mean", "std", "half_width", "low", "high"}``; std and the interval are None
    for n < 2 (no interval from one value).
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("mean_ci: no values")
    mean = statistics.fmean(vals)
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "half_width": None, "low": None, "high": None}
    std = statistics.stdev(vals)
    hw = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "half_width": hw, "low": mean - hw, "high": mean + hw}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Optional[Dict]:
    """``a - b`` over the seeds both have (keys): per-seed differences and :func:`mean_ci` of them.

    Returns None when no seed is shared. ``"seeds"`` lists the shared seeds in order, ``"diffs"`` the
    differences, plus the :func:`mean_ci` fields.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    return {"seeds": seeds, "diffs": diffs, **mean_ci(diffs)}


def seeds_for_half_width(std: float, target: float, max_n: int = 1000) -> Optional[int]:
    """The smallest number of seeds ``n`` >= 2 whose 95% t-interval half-width ``t_{0.975,n-1} * std / sqrt(n)``
    is at most ``target`` (same units as ``std``, e.g. AP50 points), if the spread stays ``std``; None when
    even ``max_n`` seeds are not enough. A planning estimate: the next seeds' spread will differ."""
    if not (std >= 0 and target > 0):
        raise ValueError(f"seeds_for_half_width: need std >= 0 and target > 0, got std={std}, target={target}")
    for n in range(2, max_n + 1):
        if t_quantile_975(n - 1) * std / math.sqrt(n) <= target:
            return n
    return None
