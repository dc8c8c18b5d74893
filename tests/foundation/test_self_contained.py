"""The repository stands on its own: no file cites the design notes the project was planned from, which users
do not have. What the code needs to explain lives in docs/ and is cited from there."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Built from parts so that this file does not match itself.
CITATION = re.compile(r"\bDESIGN" + r"(\.md\b| ?§| section \d)")
SKIP_DIRS = {".git", ".venv", "output", "build", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _repository_files():
    """Tracked files (``git ls-files``); outside a git checkout, every file of the tree but the ignored dirs."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d, dirs, names in os.walk(ROOT):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.endswith(".egg-info")]
            rel = os.path.relpath(d, ROOT)
            if rel == "datasets" or rel.startswith("datasets" + os.sep):
                names = [n for n in names if n == "README.md"] if rel == "datasets" else []
            files += [os.path.normpath(os.path.join(rel, n)) for n in names]
        return files


def test_no_file_cites_the_design_notes():
    files = _repository_files()
    assert len(files) > 50 and "README.md" in files and "metaalign_det/meta/step.py" in files
    hits = []
    for rel in files:
        path = os.path.join(ROOT, rel)
        if not os.path.isfile(path):  # deleted in the work tree but still tracked
            continue
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data:  # binary (images)
            continue
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if CITATION.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "files cite the design notes (write what users need into docs/ instead):\n" + "\n".join(hits)


def test_the_pattern_catches_every_citation_style():
    for text in ("see DESIGN" + ".md", "(DESIGN" + " §7)", "DESIGN" + "§7's anchors", "DESIGN" + " section 5 order"):
        assert CITATION.search(text), text
    assert not CITATION.search("by design; the design of the heads")
