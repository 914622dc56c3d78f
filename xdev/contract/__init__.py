"""The contract between xdev's core and its backends: the bottom layer of the package.

Backends import from here and from nowhere else in xdev; the core imports from here and
reaches a backend only through ``xdev._registry``. Nothing here imports the core, a
backend or the benchmark (see docs/architecture.md and tests/tools/test_layers.py).

- ``device``: the Device interface every backend implements, BackendStatus;
- ``shapes``: matmul shapes (NumPy rules), conv2d parameters (PyTorch rules), ConvParams,
  and the kernels' integer helpers (cdiv, round_up, check_int32);
- ``dtypes``: the dtypes xdev computes in (NumPy's promotion; integers exact, wrapping);
- ``errors``: BackendUnavailable, KernelBuildError;
- ``kernel_cache``: kernel sources with their line map, the memoizing build cache;
- ``json_store``: the versioned, checked, atomic JSON file behind every cache on disk;
- ``env``: every ``XDEV_*`` environment variable, read in one place;
- ``machine``: what this host is (CPU, BLAS) and the table of peak rates;
- ``fork``: the fork rule (a driver opened before fork() is unusable in the child).
"""
from .device import BackendStatus, Device
from .dtypes import BOOL, DTYPES, DTYPES_TEXT, EXACT_DTYPES, F16, F32, F64, FLOAT_DTYPES, INT_DTYPES, is_exact
from .errors import BackendUnavailable, KernelBuildError
from .shapes import ConvParams, IntPair, broadcast_batch, conv_params, dgrad_as_forward, matmul_shape

__all__ = [
    "BOOL",
    "BackendStatus",
    "BackendUnavailable",
    "ConvParams",
    "DTYPES",
    "DTYPES_TEXT",
    "Device",
    "EXACT_DTYPES",
    "F16",
    "F32",
    "F64",
    "FLOAT_DTYPES",
    "INT_DTYPES",
    "IntPair",
    "KernelBuildError",
    "broadcast_batch",
    "conv_params",
    "dgrad_as_forward",
    "is_exact",
    "matmul_shape",
]
