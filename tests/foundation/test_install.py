"""The detectron2 install step: pinned sha256, deterministic pure-Python wheel, pip-visible install."""
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.helpers.d2build import repack_only

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("install_detectron2",
                                              os.path.join(ROOT, "tools", "install_detectron2.py"))
inst = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inst)


def _cached_sdist():
    path = os.path.join(inst.default_cache_dir(), inst.SDIST_FILE)
    assert os.path.exists(path), f"bootstrap should have cached {path}"
    return path


@repack_only
def test_cached_sdist_has_pinned_hash():
    assert inst.sha256_of(_cached_sdist()) == inst.SDIST_SHA256


@repack_only
def test_tampered_tarball_is_refused(tmp_path):
    bad = tmp_path / inst.SDIST_FILE
    shutil.copy(_cached_sdist(), bad)
    with open(bad, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(inst.InstallError, match="does not match the pinned"):
        inst.build_wheel(str(bad), str(tmp_path / "out"))
    # the command line refuses too, with one error line and a non-zero exit
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "install_detectron2.py"),
                           "--sdist", str(bad), "--cache", str(tmp_path / "c"), "--wheel-only"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error:") and "sha256" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c" / inst.WHEEL_FILE).exists()


@repack_only
def test_wheel_is_deterministic_pure_python(tmp_path):
    w1 = inst.build_wheel(_cached_sdist(), str(tmp_path / "a"))
    w2 = inst.build_wheel(_cached_sdist(), str(tmp_path / "b"))
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert digest(w1) == digest(w2)
    with zipfile.ZipFile(w1) as zf:
        names = zf.namelist()
        meta = zf.read("detectron2-0.6.dist-info/METADATA").decode()
        record = zf.read("detectron2-0.6.dist-info/RECORD").decode()
    assert "detectron2/__init__.py" in names and "detectron2/modeling/meta_arch/rcnn.py" in names
    assert not any(n.endswith((".so", ".cu", ".cpp")) for n in names)
    assert "Name: detectron2\n" in meta and "Version: 0.6\n" in meta
    assert all(n in record for n in names if not n.endswith("RECORD"))
    # same Python files as the sdist, byte for byte
    with tarfile.open(_cached_sdist()) as tar, zipfile.ZipFile(w1) as zf:
        member = tar.extractfile("pb1-detectron2-0.6/detectron2/engine/defaults.py").read()
        assert zf.read("detectron2/engine/defaults.py") == member


def test_installed_detectron2_is_visible_to_pip():
    import detectron2

    assert detectron2.__version__ == "0.6"
    proc = subprocess.run([sys.executable, "-m", "pip", "show", "detectron2"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Version: 0.6" in proc.stdout


def test_installer_keeps_an_importable_detectron2(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "install_detectron2.py"),
                           "--cache", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "keeping it" in proc.stdout
    assert not list(tmp_path.iterdir())  # nothing downloaded or built


# ---- --source: a real build of a source tree (a tiny stand-in for detectron2: one C extension) ---------------

_FAKE_SETUP = """
from setuptools import Extension, setup
setup(name="detectron2", version="0.6", packages=["detectron2"],
      ext_modules=[Extension("detectron2._C", ["detectron2/csrc/ops.c"])])
"""
_FAKE_C = """
#include <Python.h>
static PyObject* answer(PyObject* self, PyObject* args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_C", NULL, -1, methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mod); }
"""


def _fake_source(root, c_code=_FAKE_C):
    tree = root / "detectron2-src"
    (tree / "detectron2" / "csrc").mkdir(parents=True)
    (tree / "setup.py").write_text(_FAKE_SETUP)
    (tree / "detectron2" / "__init__.py").write_text('__version__ = "0.6"\n')
    (tree / "detectron2" / "csrc" / "ops.c").write_text(c_code)
    tarball = root / "detectron2-src.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="detectron2-src")
    return tree, tarball


def _install(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "install_detectron2.py"), *args],
                          capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_source_build_compiles_caches_and_reuses(tmp_path):
    tree, tarball = _fake_source(tmp_path)
    cache = tmp_path / "cache"
    first = _install("--source", str(tarball), "--cache", str(cache), "--wheel-only", "--jobs", "1")
    assert first.returncode == 0, first.stderr
    assert "building detectron2 from" in first.stdout
    wheels = list((cache / "source-builds").glob("*/*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        assert any(n.startswith("detectron2/_C") and n.endswith(".so") for n in zf.namelist())  # compiled
    mtime = wheels[0].stat().st_mtime_ns
    again = _install("--source", str(tarball), "--cache", str(cache), "--wheel-only")
    assert again.returncode == 0 and "cached build" in again.stdout and "building" not in again.stdout
    assert wheels[0].stat().st_mtime_ns == mtime
    # the same tree unpacked hashes differently from its tarball, but a changed source must rebuild:
    # the key follows the bytes
    assert inst.source_digest(str(tree)) != inst.source_digest(str(tarball))
    key = inst.source_digest(str(tree))
    (tree / "detectron2" / "__init__.py").write_text('__version__ = "0.6.1"\n')
    assert inst.source_digest(str(tree)) != key
    (tree / "build").mkdir()
    (tree / "build" / "junk.o").write_bytes(b"x")  # build outputs do not change the key
    key2 = inst.source_digest(str(tree))
    (tree / "build" / "junk.o").write_bytes(b"y")
    assert inst.source_digest(str(tree)) == key2


@pytest.mark.slow
def test_source_build_failure_is_one_line_with_the_log(tmp_path):
    _, tarball = _fake_source(tmp_path, c_code="this is not C;\n")
    proc = _install("--source", str(tarball), "--cache", str(tmp_path / "cache"), "--wheel-only", "--jobs", "1")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: building detectron2 from"), proc.stderr
    assert "error" in lines[0].split("failed:", 1)[1] and "full log:" in lines[0]
    log = lines[0].rsplit("full log: ", 1)[1].rstrip(")")
    assert os.path.exists(log) and "ops.c" in open(log).read()
    assert not list((tmp_path / "cache" / "source-builds").glob("*/*.whl"))  # nothing cached


def test_source_build_names_what_is_missing(tmp_path):
    tree, _ = _fake_source(tmp_path)
    env = dict(os.environ, PATH=str(tmp_path / "empty-bin"), CXX="no-such-compiler")
    proc = _install("--source", str(tree), "--cache", str(tmp_path / "cache"), "--wheel-only", env=env)
    assert proc.returncode == 1 and "no C++ compiler found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    not_d2 = tmp_path / "other"
    not_d2.mkdir()
    (not_d2 / "README").write_text("hello")
    proc = _install("--source", str(not_d2), "--cache", str(tmp_path / "cache"), "--wheel-only")
    assert proc.returncode == 1 and "no setup.py next to a detectron2/ package" in proc.stderr
    proc = _install("--source", str(tmp_path / "missing"), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr
