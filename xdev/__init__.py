"""xdev: matmul and conv2d on NumPy (CPU), CUDA (CuPy, cuBLAS, cuDNN) or any OpenCL device.

Pick the backend with ``XDEV_BACKEND``, :func:`set_backend`, :func:`use_backend` or
``backend=``; compare them with ``python -m xdev.bench``. See docs/ for the contract.
"""
from ._array import Array
from ._config import get_backend, set_backend, use_backend
from ._ops import asarray, conv2d, matmul, synchronize
from ._registry import available_backends
from .backends.base import BackendStatus, BackendUnavailable

__version__ = "0.1.0"

__all__ = [
    "Array",
    "BackendStatus",
    "BackendUnavailable",
    "asarray",
    "available_backends",
    "conv2d",
    "get_backend",
    "matmul",
    "set_backend",
    "synchronize",
    "use_backend",
]
