"""cuBLAS through CuPy's low-level binding: the constants of xdev's GEMM calls, and its own handles.

xdev calls ``cublasGemmEx`` / ``cublasGemmStridedBatchedEx`` on handles it owns (one per
thread and device: cuBLAS handles are per thread), with the compute type in each call, so no
process-global state of CuPy's (its handle's math mode, its compute-type switch) is touched.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xdev.contract import F16, F32, F64

from .stream import pointer_function

_lib: Any = None


def lib() -> Any:
    """CuPy's cuBLAS binding, imported once (an import statement per call costs ~1 us)."""
    global _lib
    if _lib is None:
        from cupy_backends.cuda.libs import cublas  # noqa: PLC0415  (needs the cuBLAS library)

        _lib = cublas
    return _lib


# cudaDataType (library_types.h), cublasComputeType_t (cublas_api.h): the values CuPy's
# cupy_backends.cuda.libs.cublas and runtime enums use.
CUDA_R = {F16: 2, F32: 0, F64: 1}  # CUDA_R_16F, CUDA_R_32F, CUDA_R_64F
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT = -1  # CUBLAS_GEMM_DEFAULT
DEFAULT_MATH = 0  # CUBLAS_DEFAULT_MATH: no TF32 unless the compute type asks for it
# alpha = 1, beta = 0 in the compute type's precision, in host memory (pointer mode host).
# The arrays stay alive for the process; their addresses are taken once (``.ctypes`` costs ~1 us).
_SCALAR_ARRAYS = [np.ones(1, np.float32), np.zeros(1, np.float32), np.ones(1, np.float64), np.zeros(1, np.float64)]
SCALARS = {np.dtype(np.float32): (_SCALAR_ARRAYS[0].ctypes.data, _SCALAR_ARRAYS[1].ctypes.data),
           np.dtype(np.float64): (_SCALAR_ARRAYS[2].ctypes.data, _SCALAR_ARRAYS[3].ctypes.data)}


_stream_ptr: Any = None


def handle(dev: Any) -> int:
    """This thread's cuBLAS handle on CudaDevice ``dev``, bound to CuPy's current stream.

    cuBLAS runs on its handle's stream, the legacy default until told: the handle follows
    CuPy's current stream (where xdev queues everything else), rebound only when it changes.
    """
    global _stream_ptr
    tls = dev._tls
    h = getattr(tls, "handle", None)
    if h is None:
        cublas = lib()
        with dev._cp:
            h = cublas.create()
            cublas.setMathMode(h, DEFAULT_MATH)  # xdev's handle: nobody else changes its mode
        tls.handle = h
        tls.stream = None
        if _stream_ptr is None:
            _stream_ptr = pointer_function()
    stream = _stream_ptr()
    if tls.stream != stream:
        lib().setStream(h, stream)
        tls.stream = stream
    return h
