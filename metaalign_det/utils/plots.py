"""Training curves from detectron2's ``metrics.json`` (one JSON object per line, written by JSONWriter)
into one PNG: losses, mean AP over iterations, and ``meta/grad_cos`` (MetaAlign's gradient agreement) when
logged. Uses matplotlib's Agg canvas directly, so it never touches the global pyplot backend.

The PNG is exactly ``PANEL_PX[0] * panels`` x ``PANEL_PX[1]`` pixels (panels side by side).
"""
import io
import json
import math
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional

from .io import atomic_write_bytes

__all__ = ["PANEL_PX", "load_metrics", "curve_groups", "plot_training_curves"]

DPI = 100
PANEL_PX = (500, 400)  # width, height of one panel in pixels
_AP_KEY = re.compile(r"(^|/)AP\d*$")  # "bbox/AP50", "foggy_val/bbox/AP50", "bbox/AP" -- not "AP50-car"


def load_metrics(path: str) -> List[Dict]:
    """Records of ``path`` (a metrics.json, or an output dir holding one); lines that are not JSON objects
    with an "iteration" (e.g. a line cut by a crash) are skipped."""
    file = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: not found (expected detectron2's metrics.json in the output dir)")
    records = []
    with open(file) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "iteration" in rec:
                records.append(rec)
    if not records:
        raise ValueError(f"{file}: no JSON lines with an 'iteration' (is it detectron2's metrics.json?)")
    return records


def curve_groups(records: List[Dict]) -> "OrderedDict[str, List[str]]":
    """Panel name -> metric keys: "losses" (every key with "loss"), "AP" (mean AP keys), "meta/grad_cos"."""
    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) and k != "iteration"})
    groups = OrderedDict()
    losses = [k for k in keys if "loss" in k]
    groups["losses"] = sorted(losses, key=lambda k: (k != "total_loss", k))
    groups["AP"] = [k for k in keys if _AP_KEY.search(k)]
    groups["meta/grad_cos"] = [k for k in keys if k.startswith("meta/grad_cos")]
    return OrderedDict((g, ks) for g, ks in groups.items() if ks)


def _series(records, key):
    by_iter = {}
    for r in records:  # a resumed run rewrites iterations: the last value wins
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            by_iter[int(r["iteration"])] = float(v)
    its = sorted(by_iter)
    return its, [by_iter[i] for i in its]


def plot_training_curves(records: List[Dict], out_path: str, title: Optional[str] = None) -> List[str]:
    """Draw the panels of :func:`curve_groups` into ``out_path`` (PNG, written atomically); returns the
    panel names. Raises ValueError when there is nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = curve_groups(records)
    if not groups:
        raise ValueError("metrics have no loss, AP or meta/grad_cos values to plot")
    n = len(groups)
    fig = Figure(figsize=(PANEL_PX[0] * n / DPI, PANEL_PX[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    for k, (name, keys) in enumerate(groups.items()):
        ax = fig.add_subplot(1, n, k + 1)
        positive = True
        for key in keys:
            its, vals = _series(records, key)
            few = len(its) < 30
            ax.plot(its, vals, label=key, linewidth=1.2, marker="o" if few else None, markersize=3)
            positive &= all(v > 0 for v in vals)
        if name == "losses" and positive:
            ax.set_yscale("log")
        if name == "meta/grad_cos":
            ax.axhline(0.0, color="gray", linewidth=0.8)
            ax.set_title("meta/grad_cos: cos(grad L_align, grad L_det)", fontsize=9)
        else:
            ax.set_title("mean AP (%)" if name == "AP" else name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox_inches="tight": the pixel size stays as documented
    atomic_write_bytes(out_path, buf.getvalue())
    return list(groups)
