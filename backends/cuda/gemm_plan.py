"""numpy.matmul on cuBLAS's strided-batched GEMM: the call plan, in pure Python (no CuPy).

xdev calls ``cublasGemmEx`` / ``cublasGemmStridedBatchedEx`` itself, on a cuBLAS handle it
owns, with the compute type in the call (``CUBLAS_COMPUTE_32F`` or, with XDEV_CUDA_TF32=1,
``CUBLAS_COMPUTE_32F_FAST_TF32``): no process-global state of CuPy's is touched. The plan
below maps row-major operands of any strides onto cuBLAS's column-major GEMM without copies
where a layout allows, and is checked in the test suite against NumPy through an emulation of
the cuBLAS call.

Row-major C (M, N) = A (M, K) B (K, N) is column-major C^T (N x M) = B^T (N x K) A^T (K x M):
cuBLAS's first operand is B, its second A, with m = N, n = M.
"""
from __future__ import annotations

from dataclasses import dataclass

from xdev.contract.shapes import check_int32, merge_dims

OP_N, OP_T = 0, 1


def operand(rows: int, cols: int, srow: int, scol: int) -> tuple[int, int] | None:
    """(op, ld) for cuBLAS to read the row-major-indexed (rows, cols) matrix as its transpose.

    Element (i, j) is at i*srow + j*scol. cuBLAS sees a (cols x rows) column-major operand:
    with op N the memory must hold it directly (scol == 1, ld = srow); with op T the memory
    holds the (rows x cols) column-major matrix (srow == 1, ld = scol). Size-1 dimensions
    have no meaningful stride. None: neither fits (a copy is needed).
    """
    if scol == 1 or cols == 1:
        ld = srow if rows > 1 else max(cols, 1)
        if ld >= max(cols, 1):
            return OP_N, ld
    if srow == 1 or rows == 1:
        ld = scol if cols > 1 else max(rows, 1)
        if ld >= max(rows, 1):
            return OP_T, ld
    return None


# Batch dims as few as possible: [(size, (stride per operand))] (shared with OpenCL).
collapse = merge_dims


@dataclass(frozen=True)
class Gemm:
    """One cuBLAS strided-batched GEMM per index of ``outer`` (offsets in elements)."""

    m: int
    n: int
    k: int
    op_first: int  # cuBLAS's A = xdev's b
    ld_first: int
    op_second: int  # cuBLAS's B = xdev's a
    ld_second: int
    ldc: int
    batch: int
    stride_first: int
    stride_second: int
    stride_c: int
    outer: tuple[tuple[int, int, int], ...]  # (offset b, offset a, offset c) per launch


def plan(M: int, N: int, K: int, batch_shape: tuple[int, ...], a_bstrides: tuple[int, ...],
         b_bstrides: tuple[int, ...], c_bstrides: tuple[int, ...], a_mat: tuple[int, int],
         b_mat: tuple[int, int], c_mat: tuple[int, int]) -> Gemm | str:
    """The GEMM for (…, M, K) @ (…, K, N) -> (…, M, N), strides in elements, batch broadcast done.

    ``*_bstrides`` are the batch strides over ``batch_shape`` (0 where broadcast), ``*_mat``
    the (row, column) strides of the matrices. Returns a Gemm, or which operand needs a copy
    ("a", "b" or "c").
    """
    fa = operand(M, K, *a_mat)
    if fa is None:
        return "a"
    fb = operand(K, N, *b_mat)
    if fb is None:
        return "b"
    # C is written as column-major C^T (N x M): needs unit column stride.
    if not (c_mat[1] == 1 or N == 1):
        return "c"
    ldc = c_mat[0] if M > 1 else max(N, 1)
    if ldc < max(N, 1):
        return "c"
    dims = collapse(batch_shape, b_bstrides, a_bstrides, c_bstrides)
    if dims:
        batch, (sb, sa, sc) = dims[-1]
        outer_dims = dims[:-1]
    else:
        batch, sb, sa, sc = 1, 0, 0, M * N
        outer_dims = []
    offsets = [(0, 0, 0)]
    for n, (db, da, dc) in outer_dims:
        offsets = [(ob + i * db, oa + i * da, oc + i * dc) for ob, oa, oc in offsets for i in range(n)]
    check_int32("matmul on CUDA", "split the product (e.g. a smaller batch or matrix)", M=M, N=N, K=K,
                lda=fa[1], ldb=fb[1], ldc=ldc, batch=batch)
    # Column-major C^T = op(B^T) op(A^T): m = N, n = M.
    return Gemm(N, M, K, fb[0], fb[1], fa[0], fa[1], ldc, batch, sb, sa, sc, tuple(offsets))


def batch_strides(shape: tuple[int, ...], strides: tuple[int, ...], batch: tuple[int, ...], isz: int) -> tuple[int, ...]:
    """Element strides of an operand's batch dims broadcast to ``batch`` (0 where broadcast)."""
    nb = len(shape) - 2
    out = []
    for i in range(len(batch)):
        j = i - (len(batch) - nb)
        out.append(0 if j < 0 or shape[j] == 1 else strides[j] // isz)
    return tuple(out)


def plan_arrays(ashape: tuple[int, ...], astrides: tuple[int, ...], bshape: tuple[int, ...],
                bstrides: tuple[int, ...], cshape: tuple[int, ...], cstrides: tuple[int, ...],
                isz: int) -> Gemm | str:
    """The Gemm for arrays a (…, M, K), b (…, K, N), out (…, M, N) (byte strides, as NumPy/CuPy give them).

    Or a word: "empty" (nothing to compute), "zero" (K = 0: out is zeros), or the operand to
    copy first ("a", "b"; "c": compute into a packed array, then copy into out).
    """
    M, K = ashape[-2:]
    N = bshape[-1]
    batch = tuple(cshape[:-2])
    if any(v == 0 for v in cshape):
        return "empty"
    if K == 0:
        return "zero"
    if any(s < 0 for s in astrides[:-2]) or any(s % isz for s in astrides):
        return "a"
    if any(s < 0 for s in bstrides[:-2]) or any(s % isz for s in bstrides):
        return "b"
    if any(s < 0 for s in cstrides) or any(s % isz for s in cstrides):
        return "c"
    return plan(
        M, N, K, batch,
        batch_strides(ashape, astrides, batch, isz), batch_strides(bshape, bstrides, batch, isz),
        batch_strides(cshape, cstrides, batch, isz),
        (astrides[-2] // isz, astrides[-1] // isz), (bstrides[-2] // isz, bstrides[-1] // isz),
        (cstrides[-2] // isz, cstrides[-1] // isz),
    )
