"""File-tree helpers shared by the generated-dataset tests."""
import os


def tree_bytes(root):
    """{path relative to root: file bytes} of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out
