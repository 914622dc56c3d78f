"""matmul on CUDA: numpy.matmul semantics on xdev's own cuBLAS GEMM calls (the plan: gemm_plan.py)."""
from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from xdev.contract import F32, F64, env, is_exact

from . import cublas
from .gemm_plan import Gemm, plan_arrays

_PLANS_MAX = 4096  # entries kept per device before a table starts over


class _Prepared:
    """One gemm_plan.Gemm as cuBLAS call arguments: everything but the handle and the pointers.

    A call passes (handle, *head, B + ob, *mid1, A + oa, *mid2, C + oc, *tail) per outer batch
    offset (ob, oa, oc), in bytes; ``tails`` holds the strict and the TF32 compute type.
    """

    __slots__ = ("batched", "head", "mid1", "mid2", "tails", "offsets", "f32")

    def __init__(self, g: Gemm, dt: Any) -> None:
        if dt == F64:
            compute = (cublas.COMPUTE_64F, cublas.COMPUTE_64F)
            one, zero = cublas.SCALARS[F64]
        else:  # float16 accumulates in float32
            compute = (cublas.COMPUTE_32F, cublas.COMPUTE_32F_FAST_TF32 if dt == F32 else cublas.COMPUTE_32F)
            one, zero = cublas.SCALARS[F32]
        code, isz = cublas.CUDA_R[dt], dt.itemsize
        self.batched = g.batch != 1
        self.head = (g.op_first, g.op_second, g.m, g.n, g.k, one)
        algo = cublas.GEMM_DEFAULT
        if self.batched:
            self.mid1 = (code, g.ld_first, g.stride_first)
            self.mid2 = (code, g.ld_second, g.stride_second, zero)
            self.tails = tuple((code, g.ldc, g.stride_c, g.batch, c, algo) for c in compute)
        else:
            self.mid1 = (code, g.ld_first)
            self.mid2 = (code, g.ld_second, zero)
            self.tails = tuple((code, g.ldc, c, algo) for c in compute)
        self.offsets = tuple((ob * isz, oa * isz, oc * isz) for ob, oa, oc in g.outer)
        self.f32 = dt == F32

    def run(self, dev: Any, pa: int, pb: int, pc: int) -> None:
        """The planned cuBLAS call(s) on raw pointers: this thread's handle, CuPy's current stream."""
        h = cublas.handle(dev)
        # TF32 on GPUs that have it (compute capability 8.0+), when XDEV_CUDA_TF32=1 now. (Not
        # env.cuda_switches(): a bad XDEV_CUDNN_FAST must not stop a matmul.)
        tail = self.tails[1] if (self.f32 and env.cuda_tf32() and dev.cc >= (8, 0)) else self.tails[0]
        head, mid1, mid2 = self.head, self.mid1, self.mid2
        fn = cublas.lib().gemmStridedBatchedEx if self.batched else cublas.lib().gemmEx
        for ob, oa, oc in self.offsets:
            fn(h, *head, pb + ob, *mid1, pa + oa, *mid2, pc + oc, *tail)


def matmul(dev: Any, a: Any, b: Any) -> Any:
    """a @ b on CudaDevice ``dev`` (current), with numpy.matmul's 1-D and broadcasting rules.

    After the first call with these shapes, strides and dtype, a call makes its output and
    runs the prepared cuBLAS call: no shape logic, no planning (``dev._matmul_calls``).
    """
    dt = a.dtype
    key = (a.shape, a.strides, b.shape, b.strides, dt)
    hit = dev._matmul_calls.get(key)
    if hit is not None:
        out_shape, final, prep = hit
        try:
            c = cupy.empty(out_shape, dt)
            prep.run(dev, a.data.ptr, b.data.ptr, c.data.ptr)
            return c if final is None else c.reshape(final)
        except cupy.cuda.memory.OutOfMemoryError:
            raise
        except Exception:
            # The remembered call is only a shortcut: forget it, and plan this call from scratch
            # (whose own errors, if any, are the ones raised).
            dev._matmul_calls.pop(key, None)
    return _matmul_first(dev, a, b)


def _matmul_first(dev: Any, a: Any, b: Any) -> Any:
    """matmul for operands not seen before (or that need more than one plain cuBLAS call)."""
    if is_exact(a.dtype):
        # cuBLAS has no exact integer GEMM for every width; CuPy's own kernels compute integers
        # and bool as NumPy does (wrapping modulo 2**bits; bool: or of ands).
        return cupy.matmul(a, b)
    A = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    B = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    if A.ndim < 2 or B.ndim < 2:
        raise ValueError("matmul: scalar operands")
    M, K = A.shape[-2:]
    N = B.shape[-1]
    if B.shape[-2] != K:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align")
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2]) if (A.ndim > 2 or B.ndim > 2) else ()
    c = cupy.empty(batch + (M, N), a.dtype)
    prep = gemm_into(dev, A, B, out=c)
    final = None
    if a.ndim == 1 and b.ndim == 1:
        final = ()
    elif a.ndim == 1:
        final = batch + (N,)
    elif b.ndim == 1:
        final = batch + (M,)
    if isinstance(prep, _Prepared):  # one plain cuBLAS call on a, b and c as they are: remember it
        calls = dev._matmul_calls
        if len(calls) > _PLANS_MAX:
            calls.clear()
        calls[(a.shape, a.strides, b.shape, b.strides, a.dtype)] = (c.shape, final, prep)
    return c if final is None else c.reshape(final)


def gemm_into(dev: Any, a: Any, b: Any, out: Any) -> Any:
    """out[...] = a @ b for a (…, M, K), b (…, K, N), out (…, M, N) of the broadcast batch shape.

    One cublasGemmEx / cublasGemmStridedBatchedEx per outer batch index, on xdev's own
    handle with the compute type in the call: float32 stays FP32 (CUBLAS_COMPUTE_32F) unless
    XDEV_CUDA_TF32=1 (CUBLAS_COMPUTE_32F_FAST_TF32); float16 accumulates in float32.
    Returns the _Prepared call when a, b and out went to cuBLAS as they are, else None.
    """
    dt = a.dtype
    key = (a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, dt)
    plans = dev._gemm_plans
    g = plans.get(key)
    if g is None:
        g = plan_arrays(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, dt.itemsize)
        if not isinstance(g, str):
            g = _Prepared(g, dt)
            if len(plans) > _PLANS_MAX:
                plans.clear()
            plans[key] = g
    if isinstance(g, str):  # an operand cuBLAS cannot read in place: a packed copy, planned again
        if g == "a":
            gemm_into(dev, cupy.ascontiguousarray(a), b, out)
        elif g == "b":
            gemm_into(dev, a, cupy.ascontiguousarray(b), out)
        elif g == "zero":
            out.fill(0)
        elif g != "empty":
            tmp = cupy.empty(out.shape, dt)
            gemm_into(dev, a, b, tmp)
            out[...] = tmp
        return None
    g.run(dev, a.data.ptr, b.data.ptr, out.data.ptr)
    return g
