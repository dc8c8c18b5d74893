"""Start-up of every tool: one line on the console at once, and the library notices a user cannot act on kept
off the console (they still reach OUTPUT_DIR/log.txt).

Import it first, before torch / detectron2 (``import _toolstart; _toolstart.begin("train_net")``): importing
them takes seconds and prints deprecation notices from inside the libraries. ``begin`` prints what is loading,
then routes the known notices (:data:`KNOWN`) -- a Python warning or a library log record -- to the logger
``metaalign_det.startup`` marked file-only. Until ``metaalign_det.engine.setup.setup_logging`` sets up log.txt
they wait in a buffer there; it replays them into log.txt. Any other warning shows as usual.

Pure standard library (it runs before anything else is imported).
"""
import logging
import logging.handlers
import re
import sys
import warnings

__all__ = ["KNOWN", "begin", "STARTUP_LOGGER"]

STARTUP_LOGGER = "metaalign_det.startup"

# (category or logger name, message pattern): each is a notice about the libraries' own code, not the run
KNOWN = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),  # detectron2 scripts a few functions at import
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),  # detectron2's anchor generator
    ("torch.utils.cpp_extension", r"No CUDA runtime is found"),  # CUDA_HOME set on a machine without a GPU
    ("detectron2.config.compat", r"has no VERSION\. Assuming it to be compatible"),  # a config without VERSION
)

_state = {}


def _known_warning(message, category):
    text = str(message)
    return any(isinstance(c, type) and issubclass(category, c) and re.search(p, text) for c, p in KNOWN)


def _to_log_only(record):
    record.file_only = True  # metaalign_det.engine.setup's console handlers drop such records
    logging.getLogger(STARTUP_LOGGER).handle(record)


class _Redirect(logging.Filter):
    def __init__(self, pattern):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record):
        if self.pattern.search(record.getMessage()):
            _to_log_only(record)
            return False
        return True


def begin(tool, what="loading torch and detectron2"):
    """Print ``<tool>: <what> ...`` on stderr now and route the known notices to log.txt (idempotent)."""
    print(f"{tool}: {what} ...", file=sys.stderr, flush=True)
    if _state:
        return
    startup = logging.getLogger(STARTUP_LOGGER)
    startup.setLevel(logging.DEBUG)
    startup.propagate = False  # until setup_logging replays the buffer and turns propagation on
    startup.addHandler(logging.handlers.BufferingHandler(capacity=10000))
    original = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if _known_warning(message, category):
            _to_log_only(logging.LogRecord(
                STARTUP_LOGGER, logging.WARNING, filename, lineno,
                "%s", (warnings.formatwarning(message, category, filename, lineno, line).rstrip(),), None))
            return
        original(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    for name, pattern in KNOWN:
        if isinstance(name, str):
            logging.getLogger(name).addFilter(_Redirect(pattern))
    _state["original"] = original
