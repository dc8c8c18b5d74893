#!/usr/bin/env python3
"""Make ``import detectron2`` work in the current interpreter.

Without ``--source`` nothing is compiled. Order of preference:
1. an importable detectron2 (official build from source, or one installed earlier): kept as it is;
2. otherwise the registry sdist ``pb1-detectron2==0.6`` -- the official v0.6 Python code shipped without
   its C++ sources -- downloaded once into a cache, checked against a pinned sha256, repacked as a
   pure-Python wheel named ``detectron2`` 0.6 (kept in the cache: it is also what travels to an offline
   GPU host) and installed with pip, so ``pip show detectron2`` / ``pip uninstall detectron2`` work.

No detectron2 file is edited or committed; the missing compiled ops and the Pillow/numpy drift are
handled at import time by ``metaalign_det.compat``.

With ``--source PATH`` (a detectron2 checkout or a ``.tar.gz`` of one, e.g. ``git archive`` of main) the
official code is built the way a user with a clone builds it -- ``pip wheel --no-build-isolation`` with the
machine's compiler, which compiles the ``_C`` extension (CPU ops; CUDA ops too where nvcc and a GPU build of
torch are present) -- and installed. The wheel is cached under ``<cache>/source-builds/<key>/``, where the key
hashes the source's bytes, the Python and torch versions and the CUDA toolkit, so a second set-up with the
same inputs installs in seconds. A failed build says in one line what is missing (compiler, Python headers,
torch) and where the full build log is.

Usage: python tools/install_detectron2.py [--cache DIR] [--sdist FILE] [--source PATH] [--wheel-only] [--force]
Exit code 0 on success; non-zero with one line saying what failed and what to do.
"""
import argparse
import base64
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
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


SOURCE_SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".eggs"}


def source_digest(path):
    """sha256 of a source tarball's bytes, or of a source tree's files (relative name + bytes, sorted).

    Build outputs (``build/``, compiled ``.so``, ``__pycache__``, ``.git``) are left out of a tree's
    hash, so building in place does not change the key.
    """
    h = hashlib.sha256()
    if os.path.isfile(path):
        h.update(b"file\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SOURCE_SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith((".so", ".pyc", ".pyd")):
                continue
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def build_key(path):
    """Cache key of a source build: source bytes + interpreter + torch (+ its CUDA) + the CUDA toolkit."""
    import torch

    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or ""
    nvcc = shutil.which("nvcc") or (os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "")
    parts = [source_digest(path), f"py{sys.version_info[0]}.{sys.version_info[1]}", torch.__version__,
             str(torch.version.cuda), nvcc if nvcc and os.path.exists(nvcc) else "no-nvcc",
             os.environ.get("TORCH_CUDA_ARCH_LIST", ""), os.environ.get("FORCE_CUDA", "")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def find_setup_dir(root):
    """The directory holding detectron2's setup.py: ``root`` itself or its single top-level folder."""
    if os.path.exists(os.path.join(root, "setup.py")):
        return root
    subdirs = [os.path.join(root, d) for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))]
    for d in subdirs:
        if os.path.exists(os.path.join(d, "setup.py")):
            return d
    return None


def check_build_prerequisites():
    """Raise InstallError naming the first thing a ``_C`` build needs and this machine lacks."""
    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx.split()[0]) is None and shutil.which("g++") is None:
        raise InstallError(f"no C++ compiler found ({cxx!r} or g++ on PATH) to build detectron2's _C extension; "
                           "install one (Debian/Ubuntu: apt-get install g++), or run without --source to "
                           "use the pure-Python v0.6 wheel")
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise InstallError(f"Python headers missing (no Python.h in {include or '?'}) to build detectron2's _C "
                           f"extension; install them (Debian/Ubuntu: apt-get install python3-dev)")


def _diagnose_build_log(text):
    """The most telling line of a failed build log (the first real error, not pip's summary)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for needle in ("fatal error:", "error: command", "No module named", "ModuleNotFoundError", "error:"):
        for ln in lines:
            if needle in ln and "legacy-install-failure" not in ln and "subprocess-exited-with-error" not in ln:
                return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


def build_from_source(source, cache_dir, jobs=None):
    """Build (or take from the cache) the wheel of the detectron2 source at ``source``; return its path.

    ``source``: a directory with detectron2's ``setup.py`` (or one folder holding it), or a tarball of
    one. The build runs in a temporary copy so the user's tree is left untouched. ``jobs``: parallel
    compile jobs (default: the machine's CPU count).
    """
    if not os.path.exists(source):
        raise InstallError(f"--source {source}: no such file or directory")
    if os.path.isfile(source) and not tarfile.is_tarfile(source):
        raise InstallError(f"--source {source}: not a directory or a tar archive of a detectron2 checkout")
    key = build_key(source)
    out_dir = os.path.join(cache_dir, "source-builds", key)
    cached = sorted(f for f in os.listdir(out_dir) if f.endswith(".whl")) if os.path.isdir(out_dir) else []
    if cached:
        print(f"detectron2 from {source}: cached build {key} (same source, Python, torch and CUDA)")
        return os.path.join(out_dir, cached[0])
    check_build_prerequisites()
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="d2-build-") as tmp:
        tree = os.path.join(tmp, "src")
        if os.path.isfile(source):
            with tarfile.open(source) as tar:
                tar.extractall(tree, filter="data")
        else:
            shutil.copytree(source, tree, ignore=shutil.ignore_patterns(*SOURCE_SKIP_DIRS, "*.so"))
        setup_dir = find_setup_dir(tree)
        if setup_dir is None or not os.path.isdir(os.path.join(setup_dir, "detectron2")):
            raise InstallError(f"--source {source}: no setup.py next to a detectron2/ package inside; "
                               f"expected a detectron2 checkout (the folder with setup.py) or a tarball of one")
        wheel_dir = os.path.join(tmp, "wheel")
        env = dict(os.environ, MAX_JOBS=str(jobs or os.cpu_count() or 1))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", wheel_dir,
               setup_dir]
        print(f"building detectron2 from {source} with {env['MAX_JOBS']} jobs (compiles _C; minutes) ...",
              flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        log_path = os.path.join(cache_dir, "source-builds", f"{key}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as f:
            f.write(proc.stdout + "\n" + proc.stderr)
        wheels = sorted(f for f in os.listdir(wheel_dir) if f.endswith(".whl")) if os.path.isdir(wheel_dir) else []
        if proc.returncode != 0 or not wheels:
            reason = _diagnose_build_log(proc.stdout + "\n" + proc.stderr)
            raise InstallError(f"building detectron2 from {source} failed: {reason} (full log: {log_path})")
        staging = tempfile.mkdtemp(dir=os.path.join(cache_dir, "source-builds"), prefix=f".{key}-")
        shutil.move(os.path.join(wheel_dir, wheels[0]), os.path.join(staging, wheels[0]))
        if os.path.isdir(out_dir):  # a concurrent build finished first: keep its result
            shutil.rmtree(staging)
        else:
            os.replace(staging, out_dir)  # atomic: a half-copied build is never taken as cached
    cached = sorted(f for f in os.listdir(out_dir) if f.endswith(".whl"))
    return os.path.join(out_dir, cached[0])


def pip_install(wheel):
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--force-reinstall", wheel], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise InstallError(f"pip install {wheel} failed: {tail[0]}")


def detectron2_importable():
    return importlib.util.find_spec("detectron2") is not None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default=default_cache_dir(), help="where the sdist and wheel are kept")
    p.add_argument("--sdist", help="use this local sdist instead of downloading")
    p.add_argument("--source", help="build and install detectron2 from this checkout or tarball of one "
                   "(compiles _C; cached by the source's hash)")
    p.add_argument("--jobs", type=int, help="parallel compile jobs for --source (default: all CPUs)")
    p.add_argument("--wheel-only", action="store_true", help="build the wheel, do not install it")
    p.add_argument("--force", action="store_true", help="install even if detectron2 is importable")
    args = p.parse_args(argv)
    try:
        if importlib.util.find_spec("torch") is None:
            raise InstallError("torch not importable: install torch first (make test does)")
        if args.source:
            wheel = build_from_source(os.path.abspath(args.source), args.cache, jobs=args.jobs)
            print(f"detectron2 wheel: {wheel}")
            if args.wheel_only:
                return 0
            pip_install(wheel)
            print(f"installed detectron2 built from {args.source} (compiled _C)")
            return 0
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
        pip_install(wheel)
        print("installed detectron2 0.6 (pure Python; compiled ops replaced by metaalign_det.compat)")
        return 0
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
