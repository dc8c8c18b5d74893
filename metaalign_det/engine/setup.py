"""Setting up a run the way every tool of this project does: output directory, logging (dumps to the log file
only), config.yaml, seeds. Building the config itself is :func:`metaalign_det.cli.setup_cfg`."""
import argparse
import logging
import logging.handlers
import os
import re
from typing import Optional

import torch
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..evaluation import WeightsMismatchError
from .checkpoint import CheckpointWriteError

__all__ = ["setup_run", "setup_logging", "FILE_ONLY", "REPORTED_ERRORS", "reported_error"]

# ``logging`` extra for records that belong in OUTPUT_DIR/log.txt only (dumps of the environment, the config,
# the model): the console handlers set up by :func:`setup_logging` drop them.
FILE_ONLY = {"file_only": True}

# What the tools report as one ``error:`` line (exit status 2): bad input, and a run that cannot go on (a
# diverged step, a checkpoint that cannot be written, OUTPUT_DIR in use). When one stops training, detectron2's
# "Exception during training:" record keeps its traceback in log.txt only; the console gets the one line.
REPORTED_ERRORS = (ValueError, KeyError, FileNotFoundError, FloatingPointError, WeightsMismatchError,
                   CheckpointWriteError)



def reported_error(error: BaseException) -> Optional[BaseException]:
    """``error`` if it is one of :data:`REPORTED_ERRORS`, else the first such error in its context chain when that
    is a :class:`CheckpointWriteError` (on a full disk the hooks' final writes fail too, while handling it);
    else None (a bug: it keeps its traceback)."""
    if isinstance(error, REPORTED_ERRORS):
        return error
    return in_context_chain(error, CheckpointWriteError)


def in_context_chain(error: Optional[BaseException], types) -> Optional[BaseException]:
    """The first exception of ``types`` in ``error``'s ``__context__`` chain (``error`` included), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, types):
            return error
        error = error.__context__
    return None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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
    if getattr(record, "file_only", False):
        return False
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, REPORTED_ERRORS)


def _is_log_file_handler(handler):
    return os.path.basename(str(getattr(getattr(handler, "stream", None), "name", ""))).startswith("log.txt")


def setup_logging(output_dir: Optional[str], rank: int = 0) -> None:
    """detectron2's loggers ("detectron2", "fvcore", "metaalign_det") writing everything to
    ``output_dir/log.txt`` (rank > 0: ``log.txt.rank<N>``) and, on rank 0, to the console without colour
    codes and without records marked :data:`FILE_ONLY`."""
    for name in ("fvcore", "detectron2", "metaalign_det"):
        log = setup_logger(output_dir or None, distributed_rank=rank, name=name, color=False)
        for handler in log.handlers:
            if not _is_log_file_handler(handler):
                handler.setFormatter(_ConsoleFormatter())
                handler.addFilter(_console_record)
    _replay_startup_records()


STARTUP_LOGGER = "metaalign_det.startup"


def _replay_startup_records() -> None:
    """Library notices the tools kept off the console at start-up (tools/_toolstart.py buffers them, marked
    file-only, on the ``metaalign_det.startup`` logger) go to log.txt now, and later ones straight there."""
    startup = logging.getLogger(STARTUP_LOGGER)
    parent = logging.getLogger("metaalign_det")
    for handler in list(startup.handlers):
        if isinstance(handler, logging.handlers.BufferingHandler):
            for record in handler.buffer:
                parent.handle(record)
            startup.removeHandler(handler)
    startup.propagate = True


def setup_run(cfg: CfgNode, args: argparse.Namespace) -> None:
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
