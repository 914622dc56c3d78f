"""NumPy device: np.matmul, and conv2d as im2col (stride tricks) + one batched GEMM."""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from xdev.contract import DTYPES, DTYPES_TEXT, F16, F32, BackendStatus, ConvParams, Device
from xdev.contract.device import DL_CPU, DL_CUDA_HOST, DL_CUDA_MANAGED, DL_ROCM_HOST
from xdev.contract.machine import blas_advice, blas_isa, blas_name, cpu_name

# DLPack memory NumPy can read in place: host memory, pinned host memory, CUDA managed memory.
HOST_DLPACK = (DL_CPU, DL_CUDA_HOST, DL_ROCM_HOST, DL_CUDA_MANAGED)

# Upper bound for one im2col block, so memory stays bounded for large batches and images.
# (Smaller blocks, 2-32 MiB, measured no faster on VGG-16: they shrink the GEMMs.)
COLS_BUDGET_BYTES = 64 << 20


def probe() -> BackendStatus:
    return BackendStatus(True, f"NumPy {np.__version__}", ("numpy",))


def open_device(selector: str | None) -> NumpyDevice:
    if selector not in (None, "", "0", "cpu"):
        raise ValueError(f"the numpy backend has one device, 'numpy'; received selector {selector!r}")
    return _DEVICE


class NumpyDevice(Device):
    backend = "numpy"
    key = "numpy"
    conv_algorithms = ("gemm",)
    exact_conv_algorithms = ("gemm",)

    def __init__(self) -> None:
        self.name = cpu_name()

    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype not in DTYPES:
            raise TypeError(f"the numpy backend computes in {DTYPES_TEXT}; received {dtype}")

    def acc_dtype(self, dtype: np.dtype) -> np.dtype:
        # Integers and bool accumulate in their own type (NumPy's wrap-around), exactly.
        return F32 if dtype == F16 else np.dtype(dtype)

    def upload(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True)

    def borrow(self, host: np.ndarray) -> np.ndarray:
        return host

    def stager(self, slots: int) -> HostStager:
        return HostStager()

    def download(self, data: np.ndarray) -> np.ndarray:
        return np.array(data, copy=True)

    def astype(self, data: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return data.astype(dtype)

    def transpose(self, data: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return data.transpose(axes)

    def getitem(self, data: np.ndarray, key: tuple[Any, ...]) -> np.ndarray:
        return data[key]

    def reshape(self, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return data.reshape(shape)

    def synchronize(self) -> None:
        pass

    def dlpack_device(self) -> tuple[int, int]:
        return (DL_CPU, 0)

    def to_dlpack(self, data: np.ndarray, *, stream: Any, max_version: tuple[int, int] | None,
                  copy: bool | None) -> Any:
        if stream is not None:
            raise ValueError(f"__dlpack__: host memory has no streams; stream must be None (DLPack rule "
                             f"for CPU arrays), received {stream!r}")
        return ndarray_dlpack(np.array(data, copy=True) if copy else data, max_version)

    def wrap_dlpack(self, obj: Any, src: tuple[int, int], copy: bool | None) -> np.ndarray | None:
        if src[0] not in HOST_DLPACK:
            return None
        view = np.from_dlpack(obj)
        return np.array(view, copy=True) if copy else view

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.dtype == F16:
            # NumPy has no half-precision BLAS: compute in float32 (the documented accumulation).
            return np.matmul(a.astype(F32), b.astype(F32)).astype(F16)
        return np.matmul(a, b)

    def conv2d(
        self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, p: ConvParams, algorithm: str
    ) -> tuple[np.ndarray, str]:
        dt = x.dtype
        cdt = F32 if dt == F16 else dt
        b = None if bias is None else bias.astype(cdt, copy=False)
        y = conv2d_im2col(x.astype(cdt, copy=False), w.astype(cdt, copy=False), b, p)
        return (y if cdt == dt else y.astype(dt)), "gemm"

    def conv2d_backward(
        self, grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, p: ConvParams,
        needs: frozenset[str], algorithm: str
    ) -> tuple[Any, Any, Any, str]:
        from .backward import conv2d_backward

        return (*conv2d_backward(grad_y, x, w, p, needs, conv2d_im2col), "gemm")

    def info(self) -> dict[str, Any]:
        isa = blas_isa()
        out = {**super().info(), "numpy": np.__version__, "blas": blas_name(),
               "isa": isa["isa"], "isa_source": isa["source"]}  # what matmul's kernels are written in
        advice = blas_advice()
        if advice:
            out["advice"] = advice
        return out


class _Batch:
    __slots__ = ("host",)

    def __init__(self, host: np.ndarray) -> None:
        self.host = host


class HostStager:
    """xdev.prefetch's uploader for host memory: a batch read from disk into a new array
    (``stage``) is already on this device, so its upload is no copy."""

    def upload(self, host: np.ndarray) -> tuple[np.ndarray, None]:
        return np.array(host, copy=True), None

    def stage(self, shape: tuple[int, ...], dtype: np.dtype) -> _Batch:
        return _Batch(np.empty(shape, dtype))

    def upload_staged(self, slot: _Batch) -> tuple[np.ndarray, None]:
        return slot.host, None  # the pipeline's own new array: nobody else holds it

    def give_back(self, slot: _Batch) -> None:
        pass

    def ready(self, token: None) -> None:
        pass

    def close(self) -> None:
        pass


def ndarray_dlpack(a: np.ndarray, max_version: tuple[int, int] | None) -> Any:
    """a.__dlpack__ with the consumer's max_version where this NumPy takes it (2.1 and later)."""
    if max_version is None:
        return a.__dlpack__()
    try:
        return a.__dlpack__(max_version=max_version)
    except TypeError:  # NumPy < 2.1: legacy (unversioned) capsules only, which every consumer reads
        return a.__dlpack__()


def conv2d_im2col(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, p: ConvParams) -> np.ndarray:
    """y[n, g*Og+o, :] = W[g, o, :] @ cols[n, g, :, :] + bias, cols built by strided copies.

    The columns are built and multiplied block by block (images, then output rows) to bound
    the memory they take.
    """
    N, G, Cg, Og, K = p.N, p.groups, p.Cg, p.Og, p.K
    Ho, Wo, (sh, sw), (dh, dw) = p.Ho, p.Wo, p.stride, p.dilation
    pt, pb, pl, pr = p.pad
    out = np.empty((N, G, Og, Ho * Wo), x.dtype)
    if out.size == 0:
        return out.reshape(p.out_shape)
    wm = w.reshape(G, Og, K)
    bg = None if bias is None else bias.reshape(G, Og, 1)
    if K == 0:
        out[...] = 0 if bg is None else bg
        return out.reshape(p.out_shape)
    if p.kh == p.kw == 1 and (sh, sw) == (1, 1) and not any(p.pad):
        # 1x1 convolution: the input already is the column matrix.
        np.matmul(wm, x.reshape(N, G, Cg, p.H * p.W), out=out)
        if bg is not None:
            out += bg
        return out.reshape(p.out_shape)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(p.pad) else x
    sN, sC, sH, sW = xp.strides
    per_row = G * K * Wo * x.itemsize  # im2col bytes of one output row of one image
    rows = max(1, min(Ho, COLS_BUDGET_BYTES // max(per_row, 1)))
    imgs = max(1, min(N, COLS_BUDGET_BYTES // max(per_row * Ho, 1))) if rows == Ho else 1
    for n0 in range(0, N, imgs):
        nb = min(imgs, N - n0)
        for h0 in range(0, Ho, rows):
            hb = min(rows, Ho - h0)
            base = xp[n0 : n0 + nb, :, h0 * sh :, :]
            view = as_strided(
                base,
                shape=(nb, G, Cg, p.kh, p.kw, hb, Wo),
                strides=(sN, sC * Cg, sC, sH * dh, sW * dw, sH * sh, sW * sw),
                writeable=False,
            )
            cols = view.reshape(nb, G, K, hb * Wo)  # the im2col copy
            block = out[n0 : n0 + nb, :, :, h0 * Wo : (h0 + hb) * Wo]
            np.matmul(wm, cols, out=block)
            if bg is not None:
                block += bg
    return out.reshape(p.out_shape)


_DEVICE = NumpyDevice()
