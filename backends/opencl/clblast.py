"""CLBlast, the auto-tuned OpenCL BLAS, through ctypes: GEMM on xdev's own queue and buffers.

Only for comparison (the benchmark's "opencl clblast" row): xdev never needs CLBlast.
The library is found through ``XDEV_CLBLAST_LIB`` (a path), else the system loader
(Debian/Ubuntu ``libclblast1``), else a ``pyclblast`` installation's bundled copy.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
from functools import lru_cache

import numpy as np

from xdev.contract import env

from .array import CLArray

ENV_LIB = env.CLBLAST_LIB
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CLBlastLayout / CLBlastTranspose values


def _candidates() -> list[str]:
    given = env.clblast_lib()
    if given:
        return [given]  # an explicit choice is the only one tried, so a wrong path is reported
    out = []
    found = ctypes.util.find_library("clblast")
    if found:
        out.append(found)
    out.append("libclblast.so.1")
    spec = importlib.util.find_spec("pyclblast")
    for d in (spec.submodule_search_locations or []) if spec else []:
        parent = os.path.dirname(d)
        out += sorted(glob.glob(os.path.join(d, "*clblast*.so*")) + glob.glob(os.path.join(parent, "pyclblast.libs", "*clblast*.so*")))
    return out


@lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    errors = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
            continue
        for fn, real in (("CLBlastSgemm", ctypes.c_float), ("CLBlastDgemm", ctypes.c_double)):
            f = getattr(lib, fn)
            sz, vp = ctypes.c_size_t, ctypes.c_void_p
            f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, sz, sz, sz, real,
                          vp, sz, sz, vp, sz, sz, real, vp, sz, sz,
                          ctypes.POINTER(vp), ctypes.POINTER(vp)]
            f.restype = ctypes.c_int
        return lib, name
    why = "; ".join(errors) or "not found"
    return None, (f"CLBlast is not installed ({why}); install Debian's libclblast1 or pyclblast, "
                  f"or point {ENV_LIB} at libclblast.so")


def unavailable_reason() -> str | None:
    """None when CLBlast can be called, else why not."""
    return None if _load()[0] is not None else _load()[1]


def library_path() -> str | None:
    return _load()[1] if _load()[0] is not None else None


def _operand(x: CLArray, what: str) -> tuple[int, int]:
    """(transpose flag, leading dimension) of a 2-D view for row-major CLBlast."""
    rows, cols = x.shape
    rs, cs = x.strides
    if (cols == 1 or cs == 1) and (rows == 1 or rs >= cols):
        return NO_TRANS, rs if rows > 1 else cols
    if (rows == 1 or rs == 1) and (cols == 1 or cs >= rows):
        return TRANS, cs if cols > 1 else rows
    raise ValueError(f"CLBlast GEMM needs {what} row- or column-major (one unit stride); received "
                     f"strides {x.strides} for shape {x.shape} (copy it first)")


def gemm(dev, a: CLArray, b: CLArray) -> CLArray:
    """C = A @ B for 2-D float32/float64 arrays on an OpenCL device, by CLBlast."""
    lib, why = _load()
    if lib is None:
        raise RuntimeError(why)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"CLBlast GEMM takes (M, K) @ (K, N); received {a.shape} @ {b.shape}")
    if a.dtype != b.dtype or a.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"CLBlast GEMM here takes float32 or float64 pairs; received {a.dtype} and {b.dtype}")
    M, K = a.shape
    N = b.shape[1]
    out = dev.empty((M, N), a.dtype)
    if out.size == 0:
        return out
    if K == 0:
        dev.fill(out, 0.0)
        return out
    ta, lda = _operand(a, "A")
    tb, ldb = _operand(b, "B")
    fn = lib.CLBlastSgemm if a.dtype == np.float32 else lib.CLBlastDgemm
    queue = ctypes.c_void_p(dev.queue.int_ptr)
    with dev._lock:  # like Device.launch: one enqueue at a time per device
        status = fn(ROW_MAJOR, ta, tb, M, N, K, 1.0, a.buf.int_ptr, a.offset, lda,
                    b.buf.int_ptr, b.offset, ldb, 0.0, out.buf.int_ptr, 0, N, ctypes.byref(queue), None)
    if status != 0:
        raise RuntimeError(f"CLBlast{'S' if a.dtype == np.float32 else 'D'}gemm failed with status {status} "
                           f"(CLBlast's clblast.h lists the codes) for {M}x{K}x{N} on {dev.key} ({dev.name})")
    return out
