"""The CUDA backend's source files, for tests that must not import CuPy (compile checks, emulator)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import xdev.backends

CUDA_DIR = Path(xdev.backends.__file__).resolve().parent / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))


def load_plan() -> ModuleType:
    """backends/cuda/_plan.py without importing the package (whose __init__ imports CuPy)."""
    spec = importlib.util.spec_from_file_location("xdev_cuda_plan_under_test", CUDA_DIR / "_plan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def kernel_names(path: Path) -> list[str]:
    """The extern "C" kernels a .cu file defines (through its XDEV_* definition macros)."""
    return re.findall(r"^XDEV_[A-Z0-9_]+\((xdev_\w+),", path.read_text(), flags=re.M)
