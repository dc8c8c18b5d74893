"""Every ```yaml block of the user docs parses, and says what the project accepts.

A block whose keys are manifest keys (name, classes, source, ...) is validated by the manifest parser: a
whole manifest as it is, a fragment (e.g. only ``target:``) inside an otherwise fixed manifest. A block of
config keys (upper case) is merged into the project's config, so a misspelt key fails. Nothing here needs
data on disk: registering a pair resolves paths but reads no file.
"""
import glob
import os
import re

import pytest
import yaml

import metaalign_det  # noqa: F401

# isort: split
from detectron2.config import CfgNode, get_cfg

from metaalign_det.config import add_metaalign_config
from metaalign_det.data import load_manifest, register_domain_pair, unregister_domain_pair

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md"), os.path.join(REPO, "datasets", "README.md")] + sorted(
    glob.glob(os.path.join(REPO, "docs", "*.md")))
MANIFEST_KEYS = {"name", "classes", "class_map", "source", "target", "test", "description"}
# what a fragment is completed with: builtin datasets, registered at import, with the class "car"
FILLER = {"name": "doc_fragment", "classes": ["car"],
          "source": {"type": "registered", "name": "cityscapes_car_train"},
          "target": {"type": "registered", "name": "cityscapes_car_train"},
          "test": {"type": "registered", "name": "cityscapes_car_val"}}


def yaml_blocks():
    """[(doc:line, text)] of every fenced yaml block."""
    out = []
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r"^```ya?ml[ \t]*\n(.*?)^```", text, re.M | re.S):
            line = text[: m.start()].count("\n") + 1
            out.append((f"{os.path.relpath(path, REPO)}:{line}", m.group(1)))
    return out


BLOCKS = yaml_blocks()


def test_the_docs_have_yaml_blocks():
    # the manifest examples this test exists for (README, datasets/README) must not silently disappear
    where = {w.split(":")[0] for w, _ in BLOCKS}
    assert {"README.md", os.path.join("datasets", "README.md")} <= where
    assert sum(1 for _, t in BLOCKS if "type: images" in t) >= 2


@pytest.mark.parametrize("where, text", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_yaml_block_parses_and_is_accepted(where, text, tmp_path):
    data = yaml.safe_load(text)  # a YAMLError fails the test, naming the block in its id
    assert isinstance(data, dict) and data, f"{where}: expected a mapping"
    if set(data) <= MANIFEST_KEYS:
        manifest = data if {"name", "classes", "source", "target", "test"} <= set(data) else {**FILLER, **data}
        if manifest is data:  # a whole manifest: through the file loader, as train_net reads it
            path = tmp_path / "m.yaml"
            path.write_text(text)
            manifest = load_manifest(str(path))
        else:
            manifest = dict(manifest, base_dir=str(tmp_path))
        name = manifest["name"]
        try:
            names = register_domain_pair(**manifest)
            assert set(names) == {"source", "target", "test"}
        finally:
            unregister_domain_pair(name)
    else:
        assert all(k.isupper() for k in data), f"{where}: neither manifest keys nor config keys: {sorted(data)}"
        cfg = add_metaalign_config(get_cfg())
        cfg.merge_from_other_cfg(CfgNode.load_cfg(text))  # an unknown key is a KeyError
