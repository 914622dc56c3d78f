"""CUDA devices through CuPy: discovery, the selector, and the Device (memory, transfers, dispatch).

The work itself lives beside this module: gemm.py (matmul on cuBLAS), conv.py and backward.py
(cuDNN, or xdev's kernels: launch.py plans them, kernels.py compiles and launches them).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import cupy
import numpy as np

from xdev.contract import (DTYPES, DTYPES_TEXT, F16, F32, F64, BackendStatus, BackendUnavailable, ConvParams,
                           Device, env, fork, is_exact)
from xdev.contract.device import DL_CUDA
from xdev.contract.machine import cuda_peak_estimate

from . import backward, conv, dlpack, errors, gemm, kernels, staging, timing
from .cudnn_conv import CudnnConv, frontend, versions
from .launch import Launch

ALGORITHMS = ("cudnn", "gemm", "direct")


def _cupy_label() -> str:
    return f"CuPy {cupy.__version__}"


def _version(v: int) -> str:
    """CUDA's encoded version (12090) as text ("12.9")."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _device_count() -> int:
    """The number of GPUs: the backend's first call into CUDA (which opens the driver)."""
    fork.check("cuda")  # BackendUnavailable in a fork() child of a process that had opened CUDA
    n = int(cupy.cuda.runtime.getDeviceCount())
    fork.driver_opened("cuda", "CUDA", "CUDA calls fail with an initialization error there")
    return n


def _props(index: int) -> dict[str, Any]:
    props = cupy.cuda.runtime.getDeviceProperties(index)
    name = props.get("name", b"?")
    props["name"] = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return props


def probe() -> BackendStatus:
    """Availability of the cuda backend; never raises."""
    try:
        n = _device_count()
    except BackendUnavailable as e:  # a fork() child (contract/fork.py)
        return BackendStatus(False, str(e), ())
    except Exception as e:  # CUDARuntimeError without a driver or GPU, and anything else
        return BackendStatus(False, f"{_cupy_label()} is installed but CUDA is not usable here: {_reason(e)}", ())
    if n == 0:
        return BackendStatus(False, f"{_cupy_label()} is installed but CUDA reports no GPU", ())
    try:
        rt = _version(cupy.cuda.runtime.runtimeGetVersion())
        drv = _version(cupy.cuda.runtime.driverGetVersion())
        names = [f"cuda:{i} {_props(i)['name']}" for i in range(n)]
    except Exception as e:
        return BackendStatus(False, f"{_cupy_label()}: CUDA device query failed: {_reason(e)}", ())
    return BackendStatus(
        True, f"{_cupy_label()}, CUDA runtime {rt}, driver {drv}: {', '.join(names)}",
        tuple(f"cuda:{i}" for i in range(n)),
    )


def open_device(selector: str | None) -> "CudaDevice":
    """The device for 'cuda:N' (selector 'N'; None is device 0)."""
    try:
        n = _device_count()
    except BackendUnavailable:
        raise
    except Exception as e:
        raise BackendUnavailable(
            f"the cuda backend is unavailable: {_cupy_label()} is installed but CUDA is not usable here "
            f"({_reason(e)}); use another backend, e.g. 'numpy' or 'opencl'"
        ) from e
    if n == 0:
        raise BackendUnavailable(f"the cuda backend is unavailable: {_cupy_label()} found no GPU")
    valid = ", ".join(f"cuda:{i}" for i in range(n))
    sel = "" if selector is None else str(selector).strip()
    if sel == "":
        index = 0
    elif sel.isdigit() and int(sel) < n:
        index = int(sel)
    else:
        raise ValueError(f"there is no CUDA device 'cuda:{sel}'; valid devices: {valid}")
    return CudaDevice(index)  # the registry keeps one per key ('cuda' and 'cuda:0' are one)


class CudaDevice(Device):
    """One CUDA GPU. Native arrays are cupy.ndarray (any strides); work runs on CuPy's current stream."""

    backend = "cuda"
    exact_conv_algorithms = ("gemm",)  # im2col + CuPy's integer matmul (conv.py)
    is_cpu = False
    xp = cupy  # the array module conv.py and backward.py allocate with
    matmul_library = "cuBLAS"

    def __init__(self, index: int) -> None:
        self.index = index
        self.key = f"cuda:{index}"
        self._cp = cupy.cuda.Device(index)
        props = _props(index)
        self.name = props["name"]
        self.cc = (int(props["major"]), int(props["minor"]))
        mod, why = frontend()
        self._cudnn_reason = why
        self.conv_algorithms = ALGORITHMS if mod is not None else ALGORITHMS[1:]
        self.library_algorithms = ("cudnn",) if mod is not None else ()
        self.cudnn = CudnnConv(index, self.cc, self.name)  # forward and gradients
        self._tls = threading.local()  # this thread's cuBLAS handle (cublas.handle)
        self._gemm_plans: dict[tuple, Any] = {}  # gemm.gemm_into's prepared calls by operand layout
        self._matmul_calls: dict[tuple, Any] = {}  # gemm.matmul's: output shape, final shape, call
        self.kernels = kernels.Kernels(f"{self.key} {self.name}")

    @property
    def build_seconds(self) -> float:  # type: ignore[override]
        """Seconds spent so far compiling xdev's kernels (NVRTC) and building cuDNN plans."""
        return self.kernels.build_seconds + self.cudnn.build_seconds

    def _guard(self, what: str) -> Any:
        """Run on this device; out-of-memory surfaces as MemoryError naming ``what`` (errors.guard)."""
        return errors.guard(self, what)

    # -- dtypes ---------------------------------------------------------------------------------
    def check_dtype(self, dtype: np.dtype) -> None:
        if np.dtype(dtype) not in DTYPES:
            raise TypeError(f"{self.key} ({self.name}) computes in {DTYPES_TEXT}; received {np.dtype(dtype)}")

    def acc_dtype(self, dtype: np.dtype) -> np.dtype:
        """float16 accumulates in float32 (cuBLAS CUBLAS_COMPUTE_32F, cuDNN FLOAT compute, own kernels).

        With XDEV_CUDA_TF32=1 float32 products may use TF32 inputs (10-bit mantissa); the
        reported float16 has TF32's unit roundoff (2^-11), so error bounds stay honest.
        """
        dtype = np.dtype(dtype)
        if dtype == F16:
            return F32
        if is_exact(dtype):
            return dtype  # integers and bool: exact, modulo 2**bits (CuPy's integer matmul)
        if dtype == F32 and env.cuda_tf32() and self.cc >= (8, 0):
            return F16
        return dtype

    # -- transfers and views ------------------------------------------------------------------
    def upload(self, host: np.ndarray) -> Any:
        with self._guard(f"uploading an array of {host.nbytes:,} bytes"):
            if host.flags.c_contiguous:
                d = cupy.empty(host.shape, host.dtype)
                if host.size:
                    d.set(host)  # one copy; pinned host memory (pinned_empty) transfers at full speed
                return d
            return cupy.array(host, copy=True)

    def borrow(self, host: np.ndarray) -> Any:
        return self.upload(host)

    def download(self, data: Any) -> np.ndarray:
        with self._guard(f"downloading an array of {data.nbytes:,} bytes"):
            if data.nbytes < staging.STAGED_DOWNLOAD_MIN_BYTES:
                return cupy.asnumpy(data)
            out = np.empty(data.shape, data.dtype)
            staging.download_staged(self, cupy.ascontiguousarray(data), out)
            return out

    def download_into(self, data: Any, out: np.ndarray) -> None:
        with self._guard(f"downloading an array of {data.nbytes:,} bytes"):
            src = cupy.ascontiguousarray(data)
            if not out.flags.c_contiguous:
                np.copyto(out, self.download(src))
            elif data.nbytes < staging.STAGED_DOWNLOAD_MIN_BYTES or staging.is_pinned(out):
                src.get(out=out)  # straight into pinned memory: one DMA at full speed
            else:
                staging.download_staged(self, src, out)

    def stager(self, slots: int) -> Any:
        fork.check("cuda")
        return staging.CudaStager(self, slots)

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        import cupyx  # noqa: PLC0415

        with self._guard(f"allocating pinned host memory for {shape} {np.dtype(dtype)}"):
            return cupyx.empty_pinned(shape, dtype=dtype)

    def astype(self, data: Any, dtype: np.dtype) -> Any:
        with self._guard(f"converting {data.shape} to {np.dtype(dtype)}"):
            return data.astype(dtype)

    def transpose(self, data: Any, axes: tuple[int, ...]) -> Any:
        return data.transpose(axes)

    def getitem(self, data: Any, key: tuple[Any, ...]) -> Any:
        return data[key]

    def reshape(self, data: Any, shape: tuple[int, ...]) -> Any:
        with self._guard(f"reshaping {data.shape} to {shape}"):
            return data.reshape(shape)

    def synchronize(self) -> None:
        fork.check("cuda")
        self._cp.synchronize()

    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]:
        return timing.elapsed(self, fn, repeat)

    # -- DLPack and the CUDA array interface (dlpack.py) -----------------------------------------
    def dlpack_device(self) -> tuple[int, int]:
        return (DL_CUDA, self.index)

    def to_dlpack(self, data: Any, *, stream: Any, max_version: tuple[int, int] | None,
                  copy: bool | None) -> Any:
        return dlpack.to_dlpack(self, data, stream=stream, max_version=max_version, copy=copy)

    def wrap_dlpack(self, obj: Any, src: tuple[int, int], copy: bool | None) -> Any | None:
        return dlpack.wrap_dlpack(self, obj, src, copy)

    def cuda_array_interface(self, data: Any) -> dict[str, Any]:
        return dlpack.cuda_array_interface(self, data)

    # -- compute: gemm.py, conv.py, backward.py ---------------------------------------------------
    def matmul(self, a: Any, b: Any) -> Any:
        fork.check("cuda")
        try:
            with self._cp:
                return gemm.matmul(self, a, b)
        except Exception as e:
            err = errors.translate(self, e, lambda: f"multiplying {a.shape} @ {b.shape} ({a.dtype})")
            if err is e:
                raise
            raise err from e

    def gemm_into(self, a: Any, b: Any, out: Any) -> Any:
        """out[...] = a @ b through cuBLAS (the GEMM of the "gemm" convolutions); returns out."""
        gemm.gemm_into(self, a, b, out)
        return out

    def launch(self, plan: Launch, arrays: dict[str, Any]) -> None:
        """Run one of xdev's kernels as ``plan`` says, with ``arrays`` for its pointer roles."""
        self.kernels.launch(plan, arrays)

    def unavailable_reason(self, algorithm: str) -> str | None:
        if algorithm == "cudnn" and "cudnn" not in self.conv_algorithms:
            return self._cudnn_reason
        return None

    def conv2d(self, x: Any, w: Any, bias: Any | None, p: ConvParams, algorithm: str) -> tuple[Any, str]:
        return self._conv_call("conv2d", algorithm, x, w, conv.conv2d, self, x, w, bias, p, algorithm)

    def conv2d_backward(
        self, grad_y: Any, x: Any, w: Any, p: ConvParams, needs: frozenset[str], algorithm: str
    ) -> tuple[Any, Any, Any, str]:
        return self._conv_call("conv2d_backward", algorithm, x, w, backward.conv2d_backward,
                               self, grad_y, x, w, p, needs, algorithm)

    def _conv_call(self, op: str, algorithm: str, x: Any, w: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this device, CuPy's errors translated to xdev's (naming op and operands)."""
        fork.check("cuda")
        try:
            with self._cp:
                return fn(*args)
        except Exception as e:
            err = errors.translate(self, e, lambda: f"running {op} ({algorithm}) on x {tuple(x.shape)} with w "
                                                    f"{tuple(w.shape)} ({x.dtype})")
            if err is e:
                raise
            raise err from e

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        """cuBLAS's compute type for ``dtype`` (as matmul chooses it: TF32 only when asked for)."""
        dtype = np.dtype(dtype)
        tf32 = dtype == F32 and self.cc >= (8, 0) and env.cuda_tf32()
        return {"numeric_mode": {F16: "fp16", F64: "fp64"}.get(dtype, "tf32" if tf32 else "strict-fp32")}

    def conv_numerics(self, algorithm: str, dtype: np.dtype) -> dict[str, Any]:
        """The numerics a conv2d of ``algorithm`` just ran with (the benchmark's honesty columns)."""
        return conv.numerics(self, algorithm, dtype)

    def cudnn_choice(self) -> dict[str, Any] | None:
        """What the latest cuDNN call ran: numeric mode, Winograd/FFT allowed, layout, plan (for the benchmark)."""
        return conv.cudnn_choice(self)

    # -- description ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        props = _props(self.index)
        rt = cupy.cuda.runtime

        def attr(name: str, code: int) -> int | None:
            v = props.get(name)
            if v:
                return int(v)
            try:
                return int(rt.deviceGetAttribute(code, self.index))
            except Exception:
                return None

        clock_khz = attr("clockRate", 13)  # cudaDevAttrClockRate
        mem_khz = attr("memoryClockRate", 36)  # cudaDevAttrMemoryClockRate
        bus_bits = attr("memoryBusWidth", 37)  # cudaDevAttrGlobalMemoryBusWidth
        sms = int(props.get("multiProcessorCount", 0))
        try:
            with self._cp:
                free, total = rt.memGetInfo()
        except Exception:
            free, total = None, int(props.get("totalGlobalMem", 0))
        out: dict[str, Any] = {
            **super().info(),
            "compute_capability": f"{self.cc[0]}.{self.cc[1]}",
            "multiprocessors": sms,
            "clock_mhz": None if clock_khz is None else clock_khz / 1e3,
            "memory_bytes": int(total),
            "memory_free_bytes": None if free is None else int(free),
            "memory_bus_bits": bus_bits,
            "memory_clock_mhz": None if mem_khz is None else mem_khz / 1e3,
            "driver": _version(rt.driverGetVersion()),
            "cuda_runtime": _version(rt.runtimeGetVersion()),
            "cupy": cupy.__version__,
            **versions(),
            "conv_algorithms": list(self.conv_algorithms),
            "tf32": env.cuda_tf32(),
            "cudnn_fast": env.cudnn_fast(),
            "cudnn_autotune": env.cudnn_autotune(),
            "cudnn_autotune_limit": env.cudnn_autotune_limit(),
            "cudnn_autotune_budget_s": env.cudnn_autotune_budget_s(),
        }
        if clock_khz and sms:
            # At the maximum clock; datasheet figures (machine.datasheet_gflops) are the reference.
            out["peak_gflops_est"] = cuda_peak_estimate(self.cc, sms, clock_khz / 1e6)
        if mem_khz and bus_bits:
            out["peak_bandwidth_gbs_est"] = 2 * mem_khz * 1e3 * bus_bits / 8 / 1e9
        return out
