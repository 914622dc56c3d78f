"""xdev: matmul and conv2d on NumPy (CPU), CUDA (CuPy, cuBLAS, cuDNN) or any OpenCL device.

Pick the backend with ``XDEV_BACKEND``, :func:`set_backend`, :func:`use_backend` or
``backend=``; compare them with ``python -m xdev.bench``. See docs/ for the contract.
"""
import os as _os

# Installed, setuptools maps backends/ to xdev/backends/. In a source checkout (running from
# the repository root, or from a non-editable install shadowed by it) backends/ sits beside
# xdev/: let the package look there too, so `import xdev.backends` works either way.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "backends", "__init__.py")) and not _os.path.isdir(
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "backends")
):
    __path__.append(_checkout)  # noqa: F821 (the package's own __path__)

from ._array import Array  # noqa: E402
from ._dlpack import from_dlpack
from ._config import get_backend, set_backend, use_backend
from ._disk import drop_page_cache, npy_batches
from ._ops import asarray, conv2d, matmul, synchronize
from ._backward import Conv2dGrads, conv2d_backward
from ._prefetch import Prefetch, prefetch
from ._registry import available_backends
from .contract import BackendStatus, BackendUnavailable, KernelBuildError

__version__ = "0.1.0"


def __getattr__(name: str):
    # xdev.dask imports dask: load it on first use so that `import xdev` stays light.
    if name == "dask":
        import importlib

        return importlib.import_module("xdev.dask")
    raise AttributeError(f"module 'xdev' has no attribute {name!r}")

__all__ = [
    "Array",
    "BackendStatus",
    "BackendUnavailable",
    "Conv2dGrads",
    "KernelBuildError",
    "asarray",
    "available_backends",
    "conv2d",
    "conv2d_backward",
    "from_dlpack",
    "drop_page_cache",
    "get_backend",
    "matmul",
    "npy_batches",
    "prefetch",
    "Prefetch",
    "set_backend",
    "synchronize",
    "use_backend",
]
