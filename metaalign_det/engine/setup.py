"""Building a config the way every tool of this project does."""
import os

from detectron2.config import get_cfg

from ..config import add_metaalign_config

__all__ = ["setup_cfg"]


def setup_cfg(config_file, opts=(), freeze=True):
    """detectron2 defaults + this project's keys + ``config_file`` (with ``_BASE_``) + ``KEY VALUE`` overrides;
    then registers the domain-pair manifests it names (DATASETS.PAIR_MANIFESTS).

    Errors: a missing config file or an unknown key -> ValueError/KeyError with one line naming it.
    """
    cfg = get_cfg()
    add_metaalign_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file}: no such file")
        cfg.merge_from_file(config_file)
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd list: {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:
            raise KeyError(f"config override {list(opts)}: {e}") from None
    if freeze:
        cfg.freeze()
    _register_manifests(cfg)
    return cfg


def _register_manifests(cfg):
    if not cfg.DATASETS.PAIR_MANIFESTS:
        return
    from ..data import register_pair_manifests

    register_pair_manifests(cfg.DATASETS.PAIR_MANIFESTS)
