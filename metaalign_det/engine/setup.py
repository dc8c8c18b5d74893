"""Building a config the way every tool of this project does, and setting up a run (logging, seeds)."""
import ast
import logging
import os
import re

import torch
from detectron2.config import get_cfg
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..config import add_metaalign_config

__all__ = ["setup_cfg", "setup_run", "setup_logging", "FILE_ONLY"]

# ``logging`` extra for records that belong in OUTPUT_DIR/log.txt only (dumps of the environment, the config,
# the model): the console handlers set up by :func:`setup_logging` drop them.
FILE_ONLY = {"file_only": True}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FLOAT_INT_MISMATCH = re.compile(
    r"Type mismatch \(<class 'float'> vs\. <class 'int'>\) with values \((.*) vs\. (.*)\) for config key: (\S+)"
)


def setup_cfg(config_file, opts=(), freeze=True):
    """detectron2 defaults + this project's keys + ``config_file`` (with ``_BASE_``) + ``KEY VALUE`` overrides;
    then registers the domain-pair manifests it names (DATASETS.PAIR_MANIFESTS).

    A float key given an integer on the command line (``META.INNER_LR_SCALE 10``) takes it as a float.

    Errors: a missing config file, an unknown key or a value of the wrong type -> FileNotFoundError /
    KeyError / ValueError with one line naming it.
    """
    cfg = get_cfg()
    add_metaalign_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file}: no such file")
        try:
            cfg.merge_from_file(config_file)
        except ValueError as e:
            m = _FLOAT_INT_MISMATCH.search(str(e))
            if m:
                raise ValueError(f"{config_file}: {m.group(3)} is a float key: write {m.group(2)}.0, not "
                                 f"{m.group(2)}") from None
            raise ValueError(f"{config_file}: {e}") from None
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd list: {list(opts)}")
        try:
            cfg.merge_from_list(_ints_for_float_keys(cfg, opts))
        except (KeyError, AssertionError) as e:
            raise KeyError(f"config override {list(opts)}: {e}") from None
        except ValueError as e:
            raise ValueError(f"config override {list(opts)}: {e}") from None
    if freeze:
        cfg.freeze()
    _register_manifests(cfg)
    return cfg


def _ints_for_float_keys(cfg, opts):
    """``opts`` with every integer value of a float-typed key written as a float (yacs refuses int -> float)."""
    out = list(opts)
    for i in range(0, len(out), 2):
        node = cfg
        try:
            for part in str(out[i]).split("."):
                node = node[part]
        except (KeyError, TypeError):
            continue  # unknown key: merge_from_list names it
        if not isinstance(node, float):
            continue
        value = out[i + 1]
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue  # not a number: yacs reports the mismatch
        if isinstance(value, int) and not isinstance(value, bool):
            out[i + 1] = repr(float(value)) if isinstance(out[i + 1], str) else float(value)
    return out


def _register_manifests(cfg):
    if not cfg.DATASETS.PAIR_MANIFESTS:
        return
    from ..data import register_pair_manifests

    register_pair_manifests(cfg.DATASETS.PAIR_MANIFESTS)


# ---- run set-up -------------------------------------------------------------------------------------------


class _ConsoleFormatter(logging.Formatter):
    """``[time name]: message`` without ANSI colour codes (detectron2's console formatter adds them, and some
    messages carry their own); warnings and errors keep their level name in front."""

    def __init__(self):
        super().__init__("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")

    def format(self, record):
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname} {text}"
        return _ANSI.sub("", text)


def _console_record(record):
    return not getattr(record, "file_only", False)


def _is_log_file_handler(handler):
    return os.path.basename(str(getattr(getattr(handler, "stream", None), "name", ""))).startswith("log.txt")


def setup_logging(output_dir, rank=0):
    """detectron2's loggers ("detectron2", "fvcore", "metaalign_det") writing everything to
    ``output_dir/log.txt`` (rank > 0: ``log.txt.rank<N>``) and, on rank 0, to the console without colour
    codes and without records marked :data:`FILE_ONLY`."""
    for name in ("fvcore", "detectron2", "metaalign_det"):
        log = setup_logger(output_dir or None, distributed_rank=rank, name=name, color=False)
        for handler in log.handlers:
            if not _is_log_file_handler(handler):
                handler.setFormatter(_ConsoleFormatter())
                handler.addFilter(_console_record)


def setup_run(cfg, args):
    """What detectron2's ``default_setup`` does -- output directory, loggers, environment / arguments / config
    in the log, OUTPUT_DIR/config.yaml, RNG seeds (SEED + rank), cudnn benchmark -- with a console that
    shows the run, not the dumps: the environment, the config and the model go to OUTPUT_DIR/log.txt only,
    and nothing on the console carries ANSI colour codes."""
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    setup_logging(output_dir, rank)
    log = logging.getLogger("detectron2")
    log.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    log.info("Environment info:\n%s", collect_env_info(), extra=FILE_ONLY)
    log.info("Command line arguments: %s", args)
    config_file = getattr(args, "config_file", "")
    if config_file:
        with PathManager.open(config_file, "r") as f:
            log.info("Contents of args.config_file=%s:\n%s", config_file, f.read(), extra=FILE_ONLY)
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        dump = cfg.dump()
        log.info("Running with full config:\n%s", dump, extra=FILE_ONLY)
        with PathManager.open(path, "w") as f:
            f.write(dump)
        log.info("Full config saved to %s; environment, config and model dumps are in %s", path,
                 os.path.join(output_dir, "log.txt"))
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
