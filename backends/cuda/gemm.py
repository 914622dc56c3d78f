"""matmul on CUDA: numpy.matmul semantics on xdev's own cuBLAS GEMM calls (the plan: gemm_plan.py)."""
from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from xdev.contract import F32, F64, env, is_exact

from . import cublas
from .gemm_plan import plan_arrays

_PLANS_MAX = 4096  # plans kept per device before the table starts over


def matmul(dev: Any, a: Any, b: Any) -> Any:
    """a @ b on CudaDevice ``dev`` (current), with numpy.matmul's 1-D and broadcasting rules."""
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
    gemm_into(dev, A, B, out=c)
    if a.ndim == 1 and b.ndim == 1:
        return c.reshape(())
    if a.ndim == 1:
        return c.reshape(batch + (N,))
    if b.ndim == 1:
        return c.reshape(batch + (M,))
    return c


def gemm_into(dev: Any, a: Any, b: Any, out: Any) -> Any:
    """out[...] = a @ b for a (…, M, K), b (…, K, N), out (…, M, N) of the broadcast batch shape.

    One cublasGemmEx / cublasGemmStridedBatchedEx per outer batch index, on xdev's own
    handle with the compute type in the call: float32 stays FP32 (CUBLAS_COMPUTE_32F) unless
    XDEV_CUDA_TF32=1 (CUBLAS_COMPUTE_32F_FAST_TF32); float16 accumulates in float32.
    """
    dt = a.dtype
    key = (a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, dt.char)
    plans = dev._gemm_plans
    g = plans.get(key)
    if g is None:
        g = plan_arrays(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, dt.itemsize)
        if not isinstance(g, str):
            if len(plans) > _PLANS_MAX:
                plans.clear()
            plans[key] = g
    if isinstance(g, str):  # an operand cuBLAS cannot read in place: a packed copy, planned again
        if g == "a":
            return gemm_into(dev, cupy.ascontiguousarray(a), b, out)
        if g == "b":
            return gemm_into(dev, a, cupy.ascontiguousarray(b), out)
        if g == "zero":
            out.fill(0)
            return out
        if g == "empty":
            return out
        tmp = cupy.empty(out.shape, dt)
        gemm_into(dev, a, b, tmp)
        out[...] = tmp
        return out
    tf32 = dt == F32 and dev.cc >= (8, 0) and env.cuda_tf32()
    if dt == F64:
        compute, (one, zero) = cublas.COMPUTE_64F, cublas.SCALARS[F64]
    else:
        compute, (one, zero) = (cublas.COMPUTE_32F_FAST_TF32 if tf32 else cublas.COMPUTE_32F), cublas.SCALARS[F32]
    h = cublas.handle(dev)
    lib = cublas.lib()
    code = cublas.CUDA_R[dt]
    isz = dt.itemsize
    pa, pb, pc = a.data.ptr, b.data.ptr, out.data.ptr
    alpha, beta = one, zero
    algo = cublas.GEMM_DEFAULT
    for ob, oa, oc in g.outer:
        if g.batch == 1:
            lib.gemmEx(h, g.op_first, g.op_second, g.m, g.n, g.k, alpha, pb + ob * isz, code, g.ld_first,
                       pa + oa * isz, code, g.ld_second, beta, pc + oc * isz, code, g.ldc, compute, algo)
        else:
            lib.gemmStridedBatchedEx(
                h, g.op_first, g.op_second, g.m, g.n, g.k, alpha, pb + ob * isz, code, g.ld_first,
                g.stride_first, pa + oa * isz, code, g.ld_second, g.stride_second, beta, pc + oc * isz, code,
                g.ldc, g.stride_c, g.batch, compute, algo)
    return out
