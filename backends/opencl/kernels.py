"""Kernel sources: the .cl files beside this module (common.cl in front), built per device and options."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyopencl as cl

from xdev.contract import F16, F32, F64
from xdev.contract.kernel_cache import KernelSource

_HERE = Path(__file__).resolve().parent
BITS = {F16: 16, F32: 32, F64: 64}


# Files assembled in front of a kernel file: common.cl, except for the tensor-core GEMM,
# which stands alone (it is also compiled as CUDA and host C++) behind its PTX helpers.
_FRONT = {"gemm_tc.cl": ("tc_ptx.cl",)}


@lru_cache(maxsize=None)
def source(name: str) -> KernelSource:
    """Kernel file `name` with the files it needs in front (compiler line numbers map back to each)."""
    return KernelSource([_HERE / f for f in _FRONT.get(name, ("common.cl",))] + [_HERE / name])


def type_options(in_dtype: np.dtype, out_dtype: np.dtype) -> dict[str, int]:
    """-D options for storage types; float16 and float32 compute in float, float64 in double."""
    real = 64 if BITS[np.dtype(in_dtype)] == 64 or BITS[np.dtype(out_dtype)] == 64 else 32
    return {"REAL_BITS": real, "IN_BITS": BITS[np.dtype(in_dtype)], "OUT_BITS": BITS[np.dtype(out_dtype)]}


def exact_options(dtype: np.dtype) -> dict[str, int]:
    """-D options of the integer and bool kernels (common.cl: XT_BITS, XT_BOOL)."""
    dtype = np.dtype(dtype)
    return {"XT_BITS": 8 * dtype.itemsize, "XT_BOOL": int(dtype.kind == "b")}


KINDS = {"f": 0, "i": 1, "u": 2, "b": 3}


def convert_options(src: np.dtype, dst: np.dtype) -> dict[str, int]:
    """-D options of copy.cl's copy_cast for a conversion that involves an integer or bool
    (common.cl's SRC_KIND/DST_KIND)."""
    src, dst = np.dtype(src), np.dtype(dst)
    return {"SRC_KIND": KINDS[src.kind], "SRC_BITS": 8 * src.itemsize,
            "DST_KIND": KINDS[dst.kind], "DST_BITS": 8 * dst.itemsize}


def build_program(ctx: cl.Context, label: str, name: str, options: dict[str, int]) -> cl.Program:
    """Compile kernel file `name` with `-D` options; KernelBuildError carries the mapped log."""
    opts = [f"-D{k}={v}" for k, v in sorted(options.items())]
    src = source(name)
    try:
        return cl.Program(ctx, src.text).build(options=opts)
    except cl.Error as e:
        raise src.build_error(opts, str(e), device=label, compiler="OpenCL compiler") from None
