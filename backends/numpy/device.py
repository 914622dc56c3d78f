"""NumPy device: np.matmul, and conv2d as im2col (stride tricks) + one batched GEMM."""
from __future__ import annotations

import platform
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..base import FLOAT_DTYPES, BackendStatus, ConvParams, Device

F16, F32, F64 = FLOAT_DTYPES
# Upper bound for one im2col block, so memory stays bounded for large batches and images.
# (Smaller blocks, 2-32 MiB, measured no faster on VGG-16: they shrink the GEMMs.)
COLS_BUDGET_BYTES = 64 << 20


@lru_cache(maxsize=1)
def cpuinfo() -> dict[str, Any]:
    """Model, flags, physical cores and clock of this CPU from /proc/cpuinfo (Linux)."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": frozenset(),
                            "physical_cores": None, "mhz": None}
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = ""
            for line in f:
                k, _, v = (x.strip() for x in line.partition(":"))
                if k == "model name":
                    info["model"] = v
                elif k == "flags" and not info["flags"]:
                    info["flags"] = frozenset(v.split())
                elif k == "physical id":
                    phys = v
                elif k == "core id":
                    cores.add((phys, v))
                elif k == "cpu MHz" and info["mhz"] is None:
                    info["mhz"] = float(v)
    except (OSError, ValueError):
        pass
    info["physical_cores"] = len(cores) or None
    return info


def cpu_name() -> str:
    return cpuinfo()["model"]


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = cfg["Build Dependencies"]["blas"]
        name = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        name = "unknown BLAS"
    core = openblas_core()
    return f"{name}, {core} kernels" if core else name


def openblas_core() -> str | None:
    """The kernel set a DYNAMIC_ARCH OpenBLAS picked for this CPU (e.g. 'Haswell'), if loaded."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def blas_advice() -> str | None:
    """A hint when OpenBLAS runs AVX2 kernels on an AVX-512 CPU (it misdetects AMD Zen 5)."""
    core = openblas_core()
    avx512 = "avx512f" in cpuinfo()["flags"]
    if core and avx512 and core.lower() in ("haswell", "zen", "sandybridge"):
        return (f"OpenBLAS chose its {core} (AVX2) kernels on this AVX-512 CPU; setting "
                f"OPENBLAS_CORETYPE=SkylakeX before NumPy is imported selects its AVX-512 kernels "
                f"(about 1.9x the GEMM throughput on a Zen 5)")
    return None


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

    def __init__(self) -> None:
        self.name = cpu_name()

    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"the numpy backend computes in float16/32/64; received {dtype}")

    def acc_dtype(self, dtype: np.dtype) -> np.dtype:
        return F32 if dtype == F16 else np.dtype(dtype)

    def upload(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True)

    def borrow(self, host: np.ndarray) -> np.ndarray:
        return host

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

        return (*conv2d_backward(grad_y, x, w, p, needs), "gemm")

    def info(self) -> dict[str, Any]:
        out = {**super().info(), "numpy": np.__version__, "blas": blas_name()}
        advice = blas_advice()
        if advice:
            out["advice"] = advice
        return out


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
