"""A source checkout imports xdev.backends without an install (bench/gpu_check.sh relies on it)."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import xdev

ROOT = Path(xdev.__file__).resolve().parent.parent


def test_checkout_on_pythonpath_finds_the_backends(tmp_path):
    # -S: no site module, so no editable-install finder; NumPy comes from site-packages by path.
    path = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    code = "import xdev, xdev.backends.numpy; print(xdev.backends.__path__[0])"
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": path}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == ROOT / "backends"
