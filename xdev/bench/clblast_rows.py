"""The "opencl clblast" matmul rows: CLBlast's GEMM on the same OpenCL device, queue and
buffers as xdev's kernels, when the library is installed (never required).

With cuBLAS on the CUDA side, the lecture's "use the tuned library" claim then reads
library vs library (cuBLAS vs CLBlast) beside hand-written vs hand-written.
"""
from __future__ import annotations

from typing import Any

import xdev

from .run import Settings, _rand, _row, _time
from .workloads import matmul_flops


def clblast_unavailable(dev) -> str | None:
    """None when CLBlast can run on `dev`, else why not (also for non-OpenCL devices)."""
    if dev.backend != "opencl":
        return "CLBlast is an OpenCL library"
    from xdev.backends.opencl import clblast

    return clblast.unavailable_reason()


def clblast_rows(dev, s: Settings, sizes: list[int]) -> list[dict[str, Any]]:
    """The square sweep by CLBlast on an OpenCL GPU where the library is installed, else none.
    GPUs only: CLBlast's untuned CPU kernels ran at ~1 GFLOP/s on PoCL (minutes per 4096^3)."""
    if dev.is_cpu or s.dtype.name not in ("float32", "float64") or clblast_unavailable(dev) is not None:
        return []
    return [clblast_row(dev, s, n, n, n) for n in sizes]


def clblast_row(dev, s: Settings, M: int, K: int, N: int) -> dict[str, Any]:
    from xdev.backends.opencl import clblast

    a = xdev.asarray(_rand((M, K), s.dtype, 1), backend=dev.key)._data
    b = xdev.asarray(_rand((K, N), s.dtype, 2), backend=dev.key)._data
    t = _time(dev, lambda: clblast.gemm(dev, a, b), s)
    return _row(dev, s, "matmul", f"{M}x{K}x{N}", "clblast", t, matmul_flops(M, N, K), M=M, K=K, N=N,
                kind="clblast", library=clblast.library_path())
