"""The one atomic file write of the project: reports, images, annotation caches and checkpoints.

A crash or a concurrent reader never sees a half-written file: the data goes to a temporary file in the same
folder (``os.replace`` must not cross file systems), is flushed and fsync'ed, and is then renamed over the
target. Every file gets mode ``0o644`` (owner read/write, group and others read) whatever the process umask,
so annotation caches written into a shared dataset folder on a cluster stay readable by the group.

Pure standard library (no torch, no detectron2): every layer may use it.
"""
import contextlib
import json
import math
import os
import uuid
from typing import Any, Iterator, Optional

__all__ = ["FILE_MODE", "atomic_open", "atomic_write_bytes", "atomic_write_json", "json_safe"]

FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_open(path: str, binary: bool = True, mode: int = FILE_MODE) -> Iterator:
    """``with atomic_open(path) as f: ...`` writes ``f`` to a temp file and renames it to ``path`` on success.

    On an exception inside the block the temp file is removed and ``path`` is left as it was. ``binary``:
    ``f`` takes bytes (else text, UTF-8). ``mode``: permission bits of the final file (set explicitly, not
    through the umask).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # a unique hidden name in the same folder; "x" (O_EXCL) so two writers never share a temp file
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes, mode: int = FILE_MODE) -> str:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``."""
    with atomic_open(path, binary=True, mode=mode) as f:
        f.write(data)
    return path


def json_safe(obj: Any) -> Any:
    """``obj`` with every nan / inf float replaced by None, so the JSON is standard (no NaN tokens)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str, obj: Any, indent: Optional[int] = 2) -> str:
    """Write ``obj`` as standard JSON (nan / inf -> null) atomically; returns ``path``.

    ``indent=None`` writes compact JSON (no spaces; large annotation caches), else indented with a final
    newline (reports).
    """
    if indent is None:
        text = json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False)
    else:
        text = json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))
