"""Only public detectron2 / fvcore API outside metaalign_det/compat.py, in the whole package and its tools.

A private name is one detectron2 or fvcore (the installed build: this test runs on the v0.6 repack and on an
official build) defines with a leading underscore: a method or function ``def _x``, or an attribute
``self._x = ...``. Outside compat.py the project must not
* read or write ``obj._x`` for such a name, unless the project defines ``_x`` itself in a class of its own
  (a class that does not subclass a detectron2 / fvcore class) or as a module-level function;
* define ``def _x`` or assign ``self._x`` for such a name in a class that subclasses a detectron2 / fvcore
  class (overriding or setting the base's private state).
"""
import ast
import os
import sys

import detectron2
import fvcore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCANNED = ("metaalign_det", "tools", "benchmarks")
ALLOWED_FILE = os.path.join("metaalign_det", "compat.py")
LIBRARIES = ("detectron2", "fvcore")


def _py_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def _is_private(name):
    return name.startswith("_") and not name.startswith("__")


def _self_stores(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and \
                isinstance(sub.value, ast.Name) and sub.value.id == "self" and _is_private(sub.attr):
            yield sub


def library_private_names():
    names = set()
    for pkg in (detectron2, fvcore):
        for path in _py_files(os.path.dirname(pkg.__file__)):
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_private(node.name):
                    names.add(node.name)
            names.update(n.attr for n in _self_stores(tree))
    return names


def _library_imports(tree):
    """Names bound in a module to detectron2 / fvcore objects or modules."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            bound.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in LIBRARIES)
    return bound


def _subclasses_library(cls, bound):
    for base in cls.bases:
        root = base
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in bound:
            return True
        if isinstance(base, ast.Attribute) and base.attr == "CheckpointerBase":  # compat's, a DetectionCheckpointer
            return True
    return False


def scan():
    private = library_private_names()
    files = [p for d in SCANNED for p in _py_files(os.path.join(REPO, d))
             if os.path.relpath(p, REPO) != ALLOWED_FILE]
    trees = {}
    for p in files:
        with open(p, encoding="utf-8") as f:
            trees[p] = ast.parse(f.read())
    own, violations = set(), []
    for p, tree in trees.items():
        bound = _library_imports(tree)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_private(node.name):
                own.add(node.name)
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            defs = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            if _subclasses_library(cls, bound):
                for d in defs:
                    if d.name in private:
                        violations.append(f"{os.path.relpath(p, REPO)}:{d.lineno}: {cls.name} overrides "
                                          f"private {d.name} of its detectron2/fvcore base")
                for s in _self_stores(cls):
                    if s.attr in private:
                        violations.append(f"{os.path.relpath(p, REPO)}:{s.lineno}: {cls.name} sets private "
                                          f"self.{s.attr} of its detectron2/fvcore base")
            else:
                own.update(d.name for d in defs if _is_private(d.name))
                own.update(s.attr for s in _self_stores(cls))
    for p, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
                violations.append(f"{os.path.relpath(p, REPO)}:{node.lineno}: uses private detectron2/fvcore "
                                  f"name .{node.attr}")
    return violations, private


def test_no_private_detectron2_name_outside_compat():
    violations, private = scan()
    assert len(private) > 100  # the scan saw detectron2 and fvcore (e.g. _load_file, _data_loader_iter)
    assert {"_load_file", "_load_model"} <= private
    assert not violations, "\n".join(sorted(set(violations)))


def test_the_scan_catches_what_it_is_for(tmp_path, monkeypatch):
    # the three shapes of violation, in a scanned folder of a throwaway copy of the rules
    pkg = tmp_path / "tools"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "from detectron2.checkpoint import DetectionCheckpointer\n"
        "from detectron2 import engine\n"
        "class C(DetectionCheckpointer):\n"
        "    def _load_file(self, f):\n        return {}\n"
        "class T(engine.SimpleTrainer):\n"
        "    def go(self):\n        self._data_loader_iter = iter([])\n"
        "def g(t):\n    return t._load_model\n"
        "class Own:\n    def _helper(self):\n        return self._helper\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "SCANNED", ("tools",))
    violations, _ = scan()
    text = "\n".join(violations)
    assert "C overrides private _load_file" in text
    assert "T sets private self._data_loader_iter" in text
    assert "uses private detectron2/fvcore name ._load_model" in text
    assert "_helper" not in text  # a project class's own private names are its business
