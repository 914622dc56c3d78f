"""xdev: matmul and conv2d on NumPy (CPU), CUDA (CuPy, cuBLAS, cuDNN) or any OpenCL device.

Pick the backend with ``XDEV_BACKEND``, :func:`set_backend`, :func:`use_backend` or
``backend=``; compare them with ``python -m xdev.bench``. See docs/ for the contract.
"""


def _map_checkout_backends() -> None:
    """Make backends/ beside xdev/ the package xdev.backends in a source checkout.

    An install puts the backends in xdev/backends/. A checkout keeps them in backends/ beside
    xdev/, and whether it runs from PYTHONPATH (the GPU scripts), shadows a non-editable
    install (run from the repository root) or is installed editable, its own backends/ is
    the one to use: this maps that folder alone, so nothing else of the checkout (tests/,
    docs/) becomes part of the package.
    """
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    folder = os.path.join(os.path.dirname(here), "backends")
    init = os.path.join(folder, "__init__.py")
    if os.path.isdir(os.path.join(here, "backends")) or not os.path.isfile(init):
        return  # installed (or no backends at all: the import system says so when asked)
    spec = importlib.util.spec_from_file_location("xdev.backends", init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["xdev.backends"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    globals()["backends"] = module  # what the import system sets on the parent of a submodule it imports


_map_checkout_backends()
del _map_checkout_backends

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
