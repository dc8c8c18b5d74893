#!/usr/bin/env python3
"""Create or reuse the project's virtual environment (.venv) and install what is missing.

Run with any Python >= 3.9 (``make`` does it). Steps, each skipped when already done:
1. ``.venv`` -- created with ``--system-site-packages`` when this interpreter already has torch >= 2.1,
   so a user's own torch / detectron2 builds are kept as they are;
2. torch / torchvision from ``requirements/torch.txt`` unless the venv already imports torch >= 2.1;
3. ``requirements/base.txt``;
4. detectron2 (``tools/install_detectron2.py``: keeps an importable one, else the checked v0.6 sdist;
   with ``METAALIGN_D2_SOURCE=PATH`` set, builds and installs the official code from that checkout or
   tarball instead, compiled ``_C`` included -- what ``make test-d2main`` does);
5. ``pip install -e .`` of this project.
A stamp file holding a hash of the requirement files, setup.py, the installer and the detectron2 source
choice makes a second run return in about a second. ``METAALIGN_VENV`` names another venv folder.
"""
import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("METAALIGN_VENV", os.path.join(ROOT, ".venv"))
PY = os.path.join(VENV, "bin", "python")
STAMP = os.path.join(VENV, ".metaalign_stamp")
D2_SOURCE = os.environ.get("METAALIGN_D2_SOURCE", "")
INPUTS = ["requirements/torch.txt", "requirements/base.txt", "setup.py", "tools/install_detectron2.py",
          "tools/bootstrap.py"]


def fail(msg):
    print(f"bootstrap error: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, what):
    print(f"[bootstrap] {what}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        fail(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}")


def inputs_hash():
    h = hashlib.sha256()
    for rel in INPUTS:
        with open(os.path.join(ROOT, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read())
    if D2_SOURCE:  # a changed tarball/tree (size or time) must rebuild; the installer's cache keys on bytes
        st = os.stat(D2_SOURCE)
        h.update(f"d2-source\0{os.path.abspath(D2_SOURCE)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def torch_ok(python):
    code = ("import torch, torchvision, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0]"
            ".split('.')[:2]); sys.exit(0 if v >= (2, 1) else 3)")
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def main():
    if sys.version_info < (3, 9):
        fail(f"Python >= 3.9 needed, this is {sys.version.split()[0]}")
    if D2_SOURCE and not os.path.exists(D2_SOURCE):
        fail(f"METAALIGN_D2_SOURCE={D2_SOURCE}: no such file or directory (a detectron2 checkout or tarball)")
    digest = inputs_hash()
    if os.path.exists(STAMP) and open(STAMP).read().strip() == digest and os.path.exists(PY):
        return 0  # everything already installed for these exact inputs
    if not os.path.exists(PY):
        system_site = torch_ok(sys.executable)
        print(f"[bootstrap] creating {VENV}" + (" (with system site-packages: keeps your torch)"
                                                 if system_site else ""), flush=True)
        try:
            venv.EnvBuilder(with_pip=True, system_site_packages=system_site).create(VENV)
        except Exception as e:  # noqa: BLE001 -- one clear line for any venv failure
            fail(f"could not create the virtual environment {VENV}: {e} (on Debian: apt-get install python3-venv)")
    if torch_ok(PY):
        print("[bootstrap] torch >= 2.1 already importable: keeping it", flush=True)
    else:
        run([PY, "-m", "pip", "install", "-q", "-r", "requirements/torch.txt"],
            "installing torch/torchvision (requirements/torch.txt)")
        if not torch_ok(PY):
            fail("torch not importable after installing requirements/torch.txt")
    run([PY, "-m", "pip", "install", "-q", "-r", "requirements/base.txt"],
        "installing requirements/base.txt")
    if D2_SOURCE:
        run([PY, "tools/install_detectron2.py", "--source", os.path.abspath(D2_SOURCE)],
            f"detectron2 built from {D2_SOURCE}")
    else:
        run([PY, "tools/install_detectron2.py"], "detectron2")
    run([PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
        "installing metaalign_det (editable)")
    with open(STAMP, "w") as f:
        f.write(digest + "\n")
    print("[bootstrap] environment ready:", VENV, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
