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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("install_detectron2",
                                              os.path.join(ROOT, "tools", "install_detectron2.py"))
inst = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inst)


def _cached_sdist():
    path = os.path.join(inst.default_cache_dir(), inst.SDIST_FILE)
    assert os.path.exists(path), f"bootstrap should have cached {path}"
    return path


def test_cached_sdist_has_pinned_hash():
    assert inst.sha256_of(_cached_sdist()) == inst.SDIST_SHA256


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
