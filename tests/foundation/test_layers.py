"""The package's layers import downwards only, also inside functions (a lazy import is still a dependency).

Order, low -> high: compat, config, options, utils -> modeling, meta -> data -> evaluation -> engine -> analysis -> cli
(the tools' support). ``metaalign_det/__init__.py`` is the entry point that registers everything; it is the
only module allowed to import every layer.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(REPO, "metaalign_det")

LAYERS = {
    "compat": 0, "config": 0, "options": 0, "utils": 0,
    "modeling": 1, "meta": 1,
    "data": 2,
    "evaluation": 3,
    "engine": 4,
    "analysis": 5,
    "cli": 6,
}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, REPO)[:-3].split(os.sep)
                is_pkg = rel[-1] == "__init__"
                yield path, (rel[:-1] if is_pkg else rel), is_pkg


def _imported(tree, name, is_pkg):
    """Every ``metaalign_det...`` module name imported anywhere in ``tree`` (relative imports resolved)."""
    package = name if is_pkg else name[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = base + (node.module.split(".") if node.module else [])
            else:
                mod = node.module.split(".")
            if node.module is None:  # "from . import x": x is a submodule
                for alias in node.names:
                    yield node.lineno, mod + [alias.name]
            else:
                yield node.lineno, mod


def _layer(parts):
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_subpackage_has_a_layer():
    top = {p[1] for _, p, _ in _modules() if len(p) > 1}
    assert top == set(LAYERS), sorted(top ^ set(LAYERS))


def test_layers_import_downwards_only():
    violations = []
    for path, name, is_pkg in _modules():
        if name == ["metaalign_det"]:
            continue  # the package entry point registers every layer
        own = _layer(name)
        tree = ast.parse(open(path).read(), path)
        for line, target in _imported(tree, name, is_pkg):
            if target[0] != "metaalign_det":
                continue
            other = _layer(target)
            if other is None:  # "import metaalign_det": the whole package, i.e. every layer
                other = max(LAYERS.values())
            if other > own or (name[1] == "meta" and target[1] != "meta"):
                violations.append(f"{os.path.relpath(path, REPO)}:{line} imports {'.'.join(target)}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("module", ["meta", "utils"])
def test_pure_layers_do_not_import_detectron2(module):
    """The meta step (pure torch) and utils.io (stdlib) name no detectron2 import, not even a lazy one."""
    folder = os.path.join(PACKAGE, module)
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py")]
    if module == "utils":
        files = [os.path.join(folder, "io.py")]
    for path in files:
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "detectron2" for n in names), f"{path}:{node.lineno}"
