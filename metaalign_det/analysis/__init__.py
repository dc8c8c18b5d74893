"""Alignment diagnostics: proxy A-distance of a detector's features between two domains, and the agreement
of the alignment and detection gradients (``tools/analyze_alignment.py``)."""
from .pad import PADResult, fit_logistic, proxy_a_distance

__all__ = ["PADResult", "fit_logistic", "proxy_a_distance", "domain_features", "gradient_agreement",
           "REPRESENTATIONS"]


def __getattr__(name):
    # features.py needs detectron2; pad.py does not -- import it only when asked for
    if name in ("domain_features", "gradient_agreement", "REPRESENTATIONS"):
        from . import features

        return getattr(features, name)
    raise AttributeError(name)
