"""The contract between xdev's core and its backends: the bottom layer of the package.

Backends import from here and from nowhere else in xdev; the core imports from here and
reaches a backend only through ``xdev._registry``. This package imports NumPy and the
standard library only (see docs/architecture.md).
"""
from .device import BackendStatus, BackendUnavailable, ConvParams, Device, FLOAT_DTYPES
from .shapes import IntPair, broadcast_batch, conv_params, matmul_shape

__all__ = [
    "BackendStatus",
    "BackendUnavailable",
    "ConvParams",
    "Device",
    "FLOAT_DTYPES",
    "IntPair",
    "broadcast_batch",
    "conv_params",
    "matmul_shape",
]
