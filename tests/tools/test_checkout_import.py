"""A source checkout imports xdev.backends without an install (bench/gpu_check.sh relies on it),
and only that folder of the checkout joins the package: ``import xdev.tests`` and ``import
xdev.docs`` fail, with an install, an editable install or none."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import xdev

ROOT = Path(xdev.__file__).resolve().parent.parent
PROBE = """
import importlib, xdev, xdev.backends.numpy
print(xdev.backends.__path__[0])
for name in ("xdev.tests", "xdev.docs", "xdev.bench_results"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} imported: the checkout leaks into the package")
"""


def test_checkout_on_pythonpath_maps_the_backends_folder_only(tmp_path):
    # -S: no site module, so no editable-install finder; NumPy comes from site-packages by path.
    path = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    r = subprocess.run([sys.executable, "-S", "-c", PROBE], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": path}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == ROOT / "backends"


def test_the_installed_package_has_no_checkout_folders_either():
    """This interpreter's install (editable in the test setup), run from the repository root."""
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve().name == "backends"


def test_a_checkout_on_pythonpath_uses_its_own_backends_beside_an_editable_install(tmp_path):
    """Another checkout's xdev/ on PYTHONPATH (this interpreter's editable install maps elsewhere)."""
    import shutil

    for folder in ("xdev", "backends"):
        shutil.copytree(ROOT / folder, tmp_path / "other" / folder, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "other")}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == (tmp_path / "other" / "backends").resolve()
