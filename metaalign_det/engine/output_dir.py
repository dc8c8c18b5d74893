"""OUTPUT_DIR checked before anything is built: the folder exists (or can be created) and takes a new file.

Without this check an unwritable OUTPUT_DIR (read-only, or a file where the folder should be) surfaces as an
OSError traceback from the first write, log.txt. Remote folders (``scheme://``, served by an iopath handler)
are not checked here: their backend reports its own errors.

Pure standard library.
"""
import os
import tempfile

__all__ = ["check_output_dir"]


def _file_in_the_way(path: str) -> str:
    """The first existing component of ``path`` that is not a folder ("" if none)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:i])
        if os.path.exists(prefix) and not os.path.isdir(prefix):
            return prefix
    return ""


def check_output_dir(path: str, key: str = "OUTPUT_DIR") -> None:
    """Create ``path`` (and its parents) if missing and write and delete a temp file in it.

    Raises ValueError, one line starting ``<key> <path>:``, saying what is wrong: a file where the folder
    (or one of its parents) should be, no permission, a read-only file system, a full disk, ...
    ``key``: the setting that names the folder (``OUTPUT_DIR``, a tool's ``--root``).
    """
    if not path or ("://" in path and not path.startswith("file://")):
        return
    path = path.replace("file://", "", 1)
    blocker = _file_in_the_way(path)
    if blocker:
        what = "is a file" if os.path.abspath(blocker) == os.path.abspath(path) else f"{blocker} is a file"
        raise ValueError(f"{key} {path}: {what}, expected a folder: remove it or choose another {key}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{key} {path}: cannot create the folder ({e.strerror or e}): choose another "
                         f"{key}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write_test.", dir=path)
    except OSError as e:
        raise ValueError(f"{key} {path}: cannot write into the folder ({e.strerror or e}): make it writable "
                         f"or choose another {key}") from None
    os.close(fd)
    os.remove(tmp)
