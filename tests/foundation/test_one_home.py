"""Each rule has one home; this scan of the package and the tools keeps it so.

* the META / TEACHER / TEST.AP_* defaults and allowed values: metaalign_det/options.py (config.py takes its
  defaults from there) -- no other file reads those keys with a fallback default or re-states an allowed set;
* "is this dataset registered?": ``data/catalog.py`` (``is_registered``, ``unregistered_dataset``) -- the only
  reader of ``DatasetCatalog.list()``;
* the checkpoint's EMA entry: ``evaluation.weights`` -- the only reader of ``ckpt["ema"]`` / ``.get("ema")``
  (the trainer writes it; every tool loads evaluation weights through ``load_eval_weights``).
"""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTION_KEYS = {"AP_METRIC", "AP_IOU", "AP_COCO", "MODE", "DIRECTION", "INNER_LR_SCALE", "HVP", "FD_EPS",
               "JOINT_GRAD_COS_PERIOD", "BURN_IN_ITERS", "INIT", "SCORE_THRESH", "LOSSES", "LOSS_WEIGHT",
               "MONITOR_PERIOD", "MONITOR_GT"}
# value sets that belong to options.py only (a second copy would drift)
OPTION_SETS = [{"align_first", "det_first", "alternate"}, {"auto", "double_backward", "finite_difference"},
               {"none", "first_order", "second_order"}]


def _sources():
    for top in ("metaalign_det", "tools"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    with open(path) as fh:
                        yield os.path.relpath(path, REPO), ast.parse(fh.read(), path)


def _const(node):
    return node.value if isinstance(node, ast.Constant) else None


def test_option_keys_have_no_fallback_defaults_outside_options():
    found = []
    for rel, tree in _sources():
        if rel == os.path.join("metaalign_det", "options.py"):
            continue
        for node in ast.walk(tree):
            # cfg.X.get("KEY", default)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and len(node.args) == 2 and _const(node.args[0]) in OPTION_KEYS:
                found.append(f"{rel}:{node.lineno} .get({_const(node.args[0])!r}, ...)")
            # a literal tuple / list / set of one option's allowed values
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = {_const(e) for e in node.elts}
                if any(s <= values for s in OPTION_SETS):
                    found.append(f"{rel}:{node.lineno} {sorted(v for v in values if v)}")
    # meta/ is the pure step: its own argument domain (directions without "alternate", HVP modes) stays there;
    # tests/foundation/test_options.py pins it against options.py
    found = [f for f in found if not f.startswith(os.path.join("metaalign_det", "meta", ""))]
    assert not found, "\n".join(found)


def test_one_registered_dataset_check():
    readers = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("list", "keys") and \
                    isinstance(node.value, ast.Name) and node.value.id == "DatasetCatalog":
                readers.append(f"{rel}:{node.lineno}")
    assert readers and all(r.startswith(os.path.join("metaalign_det", "data", "catalog.py")) for r in readers), \
        readers


def test_one_reader_of_the_checkpoint_ema_entry():
    readers = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            sub = isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _const(node.slice) == "ema"
            get = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and _const(node.args[0]) == "ema"
            if sub or get:
                readers.append(f"{rel}:{node.lineno}")
    assert readers and all(r.startswith(os.path.join("metaalign_det", "evaluation", "weights.py")) for r in readers), \
        readers
