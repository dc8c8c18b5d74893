#!/usr/bin/env python3
"""Make ``import detectron2`` work in the current interpreter, without compiling anything.

Order of preference:
1. an importable detectron2 (official build from source, or one installed earlier): kept as it is;
2. otherwise the registry sdist ``pb1-detectron2==0.6`` -- the official v0.6 Python code shipped without
   its C++ sources -- downloaded once into a cache, checked against a pinned sha256, repacked as a
   pure-Python wheel named ``detectron2`` 0.6 (kept in the cache: it is also what travels to an offline
   GPU host) and installed with pip, so ``pip show detectron2`` / ``pip uninstall detectron2`` work.

No detectron2 file is edited or committed; the missing compiled ops and the Pillow/numpy drift are
handled at import time by ``metaalign_det.compat``.

Usage: python tools/install_detectron2.py [--cache DIR] [--sdist FILE] [--wheel-only] [--force]
Exit code 0 on success; non-zero with one line saying what failed and what to do.
"""
import argparse
import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_FILE = "detectron2-0.6-py3-none-any.whl"


class InstallError(RuntimeError):
    """One-line, user-facing failure of the detectron2 install step."""


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("METAALIGN_CACHE", os.path.join(base, "metaalign_det"))


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sdist(path, expected=SDIST_SHA256):
    """Raise InstallError unless ``path`` has the pinned sha256."""
    got = sha256_of(path)
    if got != expected:
        raise InstallError(
            f"{path}: sha256 {got} does not match the pinned {expected}; refusing to install it "
            f"(delete the file to download it again)"
        )


def download_sdist(cache_dir):
    """Fetch the sdist with pip into ``cache_dir`` (once) and return its path."""
    path = os.path.join(cache_dir, SDIST_FILE)
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    # --no-build-isolation: the sdist's setup.py imports torch, which must already be installed.
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", cache_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(path):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise InstallError(f"pip download {SDIST_NAME}=={SDIST_VERSION} failed: {tail[0]}")
    return path


def _record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def build_wheel(sdist_path, out_dir):
    """Repack the sdist's ``detectron2/`` package as a pure-Python wheel; return the wheel path.

    Deterministic: entries are sorted and carry a fixed timestamp, so the same sdist gives the same
    bytes. Only ``detectron2/`` is taken (no ``projects/``, no build scripts).
    """
    verify_sdist(sdist_path)
    prefix = f"{SDIST_NAME}-{SDIST_VERSION}/"
    files = {}
    with tarfile.open(sdist_path, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix + "detectron2/"):
                continue
            arcname = member.name[len(prefix):]
            files[arcname] = tar.extractfile(member).read()
    if "detectron2/__init__.py" not in files:
        raise InstallError(f"{sdist_path}: no detectron2/__init__.py inside; not the expected sdist")
    dist_info = "detectron2-0.6.dist-info"
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\nName: detectron2\nVersion: 0.6\n"
        "Summary: detectron2 v0.6 Python code (from pb1-detectron2 0.6), without compiled ops\n"
        "Home-page: https://github.com/facebookresearch/detectron2\nLicense: Apache-2.0\n"
        "Requires-Python: >=3.6\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: metaalign_det install_detectron2\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    files[f"{dist_info}/top_level.txt"] = b"detectron2\n"
    record = [_record_line(name, data) for name, data in sorted(files.items())]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()

    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, WHEEL_FILE)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".whl.tmp")
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2021, 11, 15, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])
    os.chmod(tmp, 0o644)
    os.replace(tmp, final)  # atomic: a half-written wheel is never left under the final name
    return final


def detectron2_importable():
    return importlib.util.find_spec("detectron2") is not None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default=default_cache_dir(), help="where the sdist and wheel are kept")
    p.add_argument("--sdist", help="use this local sdist instead of downloading")
    p.add_argument("--wheel-only", action="store_true", help="build the wheel, do not install it")
    p.add_argument("--force", action="store_true", help="install even if detectron2 is importable")
    args = p.parse_args(argv)
    try:
        if importlib.util.find_spec("torch") is None:
            raise InstallError("torch not importable: install torch first (make test does)")
        if detectron2_importable() and not (args.force or args.wheel_only):
            import detectron2

            print(f"detectron2 {detectron2.__version__} already importable from "
                  f"{os.path.dirname(detectron2.__file__)}; keeping it")
            return 0
        sdist = args.sdist or download_sdist(args.cache)
        wheel = os.path.join(args.cache, WHEEL_FILE)
        if args.sdist or not os.path.exists(wheel):
            wheel = build_wheel(sdist, args.cache)
        else:
            verify_sdist(sdist)
        print(f"detectron2 wheel: {wheel}")
        if args.wheel_only:
            return 0
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                               "--force-reinstall", wheel], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise InstallError(f"pip install {wheel} failed: {tail[0]}")
        print("installed detectron2 0.6 (pure Python; compiled ops replaced by metaalign_det.compat)")
        return 0
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
