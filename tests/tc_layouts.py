"""Register layouts of the warp-wide PTX instructions in backends/opencl/gemm_tc.cl, in NumPy.

Written from the PTX ISA's fragment tables ("Matrix Fragments for mma.m16n8k8" with .tf32,
"... mma.m16n8k16" with .f16, and ldmatrix), independently of the kernel. In each table
lane = 32 lanes of a warp, groupID = lane // 4, threadID_in_group = lane % 4.

- ``mma_a(shape)[lane, e]`` / ``mma_b(shape)[lane, e]`` / ``mma_c()[lane, e]``: (row, col)
  of element e that the lane holds. A 32-bit register holds one TF32 element, or two
  float16 elements (element 2r in the low half of register r, 2r+1 in the high half).
- ``ldmatrix(trans)[lane, j, h]``: (row, col) of the 16-bit element that lands in half h
  of register j of the lane, within matrix j, whose row i is read from the address that
  lane 8j+i supplied.

``warp_mma`` multiplies per-lane registers through these tables; the C++ emulator of the
tensor-core tests builds its tables from the same functions.
"""
from __future__ import annotations

import numpy as np

# shape name -> (M, N, K, element bits of A and B)
SHAPES = {"m16n8k8.tf32": (16, 8, 8, 32), "m16n8k16.f16": (16, 8, 16, 16)}
LANES = np.arange(32)
GROUP, TIG = LANES // 4, LANES % 4


def mma_a(shape: str) -> np.ndarray:
    """(row, col) of each A element per lane: int array [32, elements, 2]."""
    if shape == "m16n8k8.tf32":  # a0..a3
        rows = [GROUP, GROUP + 8, GROUP, GROUP + 8]
        cols = [TIG, TIG, TIG + 4, TIG + 4]
    elif shape == "m16n8k16.f16":  # a0..a7, two per register
        rows = [GROUP + 8 * ((i // 2) % 2) for i in range(8)]  # a0,a1,a4,a5: g; a2,a3,a6,a7: g+8
        cols = [TIG * 2 + (i & 1) + (8 if i >= 4 else 0) for i in range(8)]
    else:
        raise ValueError(shape)
    return np.stack([np.stack(rows, 1), np.stack(cols, 1)], -1)


def mma_b(shape: str) -> np.ndarray:
    """(row = k, col = n) of each B element per lane: [32, elements, 2]."""
    if shape == "m16n8k8.tf32":  # b0, b1
        rows = [TIG, TIG + 4]
    elif shape == "m16n8k16.f16":  # b0..b3
        rows = [TIG * 2 + (i & 1) + (8 if i >= 2 else 0) for i in range(4)]
    else:
        raise ValueError(shape)
    cols = [GROUP] * len(rows)
    return np.stack([np.stack(rows, 1), np.stack(cols, 1)], -1)


def mma_c() -> np.ndarray:
    """(row, col) of each float32 C/D element per lane (both shapes): [32, 4, 2]."""
    rows = [GROUP, GROUP, GROUP + 8, GROUP + 8]
    cols = [TIG * 2 + (i & 1) for i in range(4)]
    return np.stack([np.stack(rows, 1), np.stack(cols, 1)], -1)


def ldmatrix(trans: bool) -> np.ndarray:
    """(row, col) within matrix j of half h of register j per lane: [32, 4, 2, 2]."""
    out = np.zeros((32, 4, 2, 2), int)
    for lane in range(32):
        for j in range(4):
            for h in range(2):
                rc = (lane // 4, 2 * (lane % 4) + h)
                out[lane, j, h] = rc[::-1] if trans else rc
    return out


def owners(layout: np.ndarray, nrows: int, ncols: int) -> np.ndarray:
    """Inverse of a layout: [row, col] -> (lane, element); -1 where nobody holds it."""
    inv = -np.ones((nrows, ncols, 2), int)
    for lane in range(layout.shape[0]):
        for e in range(layout.shape[1]):
            r, c = layout[lane, e]
            inv[r, c] = (lane, e)
    return inv


def scatter(matrix: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """The per-lane elements [32, elements] that hold `matrix` under `layout`."""
    return matrix[layout[..., 0], layout[..., 1]]


def gather(values: np.ndarray, layout: np.ndarray, nrows: int, ncols: int) -> np.ndarray:
    """The matrix whose elements the lanes hold as `values` [32, elements]."""
    out = np.full((nrows, ncols), np.nan)
    out[layout[..., 0], layout[..., 1]] = values
    return out


def warp_mma(shape: str, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """D = A @ B + C on per-lane element values (float64), through the layouts."""
    M, N, K, _ = SHAPES[shape]
    A = gather(a, mma_a(shape), M, K)
    B = gather(b, mma_b(shape), K, N)
    C = gather(c, mma_c(), M, N)
    return scatter(A @ B + C, mma_c())


def c_table(name: str, arr: np.ndarray) -> str:
    """`arr` (ints) as a C++ constant array definition."""
    def body(x):
        if x.ndim == 1:
            return "{" + ",".join(str(int(v)) for v in x) + "}"
        return "{" + ",".join(body(y) for y in x) + "}"
    dims = "".join(f"[{n}]" for n in arr.shape)
    return f"static const int {name}{dims} = {body(np.asarray(arr))};\n"
