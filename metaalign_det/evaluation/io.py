"""Atomic file writes: a crash or a concurrent reader never sees a half-written report or image."""
import json
import math
import os
import uuid
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "json_safe"]


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``; returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # a unique name in the same folder (os.replace must not cross file systems); plain open() so the file
    # gets the usual umask permissions (mkstemp would make it owner-only)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
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


def atomic_write_json(path: str, obj: Any) -> str:
    """Write ``obj`` as indented standard JSON (nan -> null) atomically; returns ``path``."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))
