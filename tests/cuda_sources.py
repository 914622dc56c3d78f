"""The CUDA backend's source files, for tests that must not import CuPy (compile checks, emulator)."""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

import xdev.backends
from xdev.contract.kernel_cache import KernelSource

CUDA_DIR = Path(xdev.backends.__file__).resolve().parent / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))


def source_text(cu: Path) -> str:
    """What the backend compiles for ``cu``: common.cuh, then the file (kernels.source)."""
    return KernelSource([CUDA_DIR / "common.cuh", cu]).text


_STANDIN = "xdev_cuda_under_test"


def load(name: str) -> ModuleType:
    """backends/cuda/<name>.py, for the modules that need no CuPy (launch, conv, backward, gemm_plan,
    cudnn_tune), imported as a module of a stand-in package: the real package's __init__ imports CuPy."""
    if _STANDIN not in sys.modules:
        pkg = ModuleType(_STANDIN)
        pkg.__path__ = [str(CUDA_DIR)]
        sys.modules[_STANDIN] = pkg
    return importlib.import_module(f"{_STANDIN}.{name}")


def kernel_names(path: Path) -> list[str]:
    """The extern "C" kernels a .cu file defines (through its XDEV_* definition macros)."""
    return re.findall(r"^XDEV_[A-Z0-9_]+\((xdev_\w+),", path.read_text(), flags=re.M)
