"""CUDA device through CuPy: cuBLAS matmul, and conv2d through cuDNN, im2col + cuBLAS or a direct kernel."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Callable

import cupy
import numpy as np

from xdev.contract import F16, F32, FLOAT_DTYPES, BackendStatus, BackendUnavailable, ConvParams, Device, env
from xdev.contract.machine import cuda_peak_estimate
from . import _plan, kernels, staging
from .cudnn_conv import CudnnConv, CudnnUnsupported, frontend, versions

ALGORITHMS = ("cudnn", "gemm", "direct")

_lock = threading.Lock()
_DEVICES: dict[int, "CudaDevice"] = {}


def _cupy_label() -> str:
    return f"CuPy {cupy.__version__}"


def _version(v: int) -> str:
    """CUDA's encoded version (12090) as text ("12.9")."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _device_count() -> int:
    return int(cupy.cuda.runtime.getDeviceCount())


def _props(index: int) -> dict[str, Any]:
    props = cupy.cuda.runtime.getDeviceProperties(index)
    name = props.get("name", b"?")
    props["name"] = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return props


def probe() -> BackendStatus:
    """Availability of the cuda backend; never raises."""
    try:
        n = _device_count()
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
    with _lock:
        dev = _DEVICES.get(index)
        if dev is None:
            dev = _DEVICES[index] = CudaDevice(index)
    return dev


# ---- cuBLAS numerics: TF32 only when asked for ------------------------------------------------
def _routines_linalg() -> Any:
    from cupy._core import _routines_linalg  # noqa: PLC0415  (CuPy's matmul compute-type switch)

    return _routines_linalg


def _cublas() -> Any:
    from cupy_backends.cuda.libs import cublas  # noqa: PLC0415  (needs the cuBLAS library)

    return cublas


@contextlib.contextmanager
def _blas_mode(dtype: np.dtype, cc: int) -> Iterator[None]:
    """Pin CuPy's float32 GEMM numerics for the call, then restore what was there.

    cupy.matmul reaches cuBLAS two ways: 2-D products call cublasGemmEx with the compute type
    from cupy._core.get_compute_type(float32), which CuPy initializes from CUPY_TF32 at its
    first matmul; batched products use legacy compute types governed by the cuBLAS handle's
    math mode. xdev sets both to plain FP32 (CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH) unless
    XDEV_CUDA_TF32=1 asks for TF32 (CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_TF32_TENSOR_OP_MATH).
    """
    if dtype != F32:
        yield
        return
    tf32 = env.cuda_tf32() and cc >= 80
    rl = _routines_linalg()
    cublas = _cublas()
    # CuPy's COMPUTE_TYPE_DEFAULT / _TF32 and cuBLAS's math modes (values as in their headers).
    want_type = getattr(rl, "COMPUTE_TYPE_TF32", 7) if tf32 else getattr(rl, "COMPUTE_TYPE_DEFAULT", 1)
    default_mode = getattr(cublas, "CUBLAS_DEFAULT_MATH", 0)
    want_mode = getattr(cublas, "CUBLAS_TF32_TENSOR_OP_MATH", 3) if tf32 else default_mode
    handle = cupy.cuda.device.get_cublas_handle()
    prev_type = rl.get_compute_type(F32)
    get_mode = getattr(cublas, "getMathMode", None)
    prev_mode = get_mode(handle) if get_mode is not None else default_mode
    if prev_type != want_type:
        rl.set_compute_type(F32, want_type)
    if prev_mode != want_mode:
        cublas.setMathMode(handle, want_mode)
    try:
        yield
    finally:
        if prev_type != want_type:
            rl.set_compute_type(F32, prev_type)
        if prev_mode != want_mode:
            cublas.setMathMode(handle, prev_mode)


class CudaDevice(Device):
    """One CUDA GPU. Native arrays are cupy.ndarray (any strides); work runs on CuPy's current stream."""

    backend = "cuda"
    is_cpu = False

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
        self._cudnn = CudnnConv(index, self.cc)
        self.kernels = kernels.Kernels(f"{self.key} {self.name}")

    @property
    def build_seconds(self) -> float:  # type: ignore[override]
        """Seconds spent so far compiling xdev's kernels (NVRTC) and building cuDNN plans."""
        return self.kernels.build_seconds + self._cudnn.build_seconds

    # -- errors -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Run on this device; out-of-memory surfaces as MemoryError naming the bytes asked for."""
        with self._cp:
            try:
                yield
            except cupy.cuda.memory.OutOfMemoryError as e:
                raise MemoryError(self._oom_message(what, str(e))) from e
            except cupy.cuda.runtime.CUDARuntimeError as e:
                if getattr(e, "status", None) == 2:  # cudaErrorMemoryAllocation
                    raise MemoryError(self._oom_message(what, str(e))) from e
                raise
            except Exception as e:
                if type(e).__name__ == "CUBLASError" and "ALLOC_FAILED" in str(e):
                    raise MemoryError(self._oom_message(what, f"cuBLAS could not allocate its workspace ({e})")) from e
                raise

    def _oom_message(self, what: str, detail: str) -> str:
        try:
            free, total = cupy.cuda.runtime.memGetInfo()
            mem = f"; {free:,} of {total:,} bytes of device memory are free"
        except Exception:
            mem = ""
        return (
            f"{self.key} ({self.name}) ran out of device memory while {what}: {detail}{mem}. "
            f"Free arrays you no longer need, or work in smaller pieces."
        )

    # -- dtypes ---------------------------------------------------------------------------------
    def check_dtype(self, dtype: np.dtype) -> None:
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(
                f"{self.key} ({self.name}) computes in float16, float32 or float64; received {np.dtype(dtype)}"
            )

    def acc_dtype(self, dtype: np.dtype) -> np.dtype:
        """float16 accumulates in float32 (cuBLAS CUBLAS_COMPUTE_32F, cuDNN FLOAT compute, own kernels).

        With XDEV_CUDA_TF32=1 float32 products may use TF32 inputs (10-bit mantissa); the
        reported float16 has TF32's unit roundoff (2^-11), so error bounds stay honest.
        """
        dtype = np.dtype(dtype)
        if dtype == F16:
            return F32
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
        return staging.CudaStager(self, slots)

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
        self._cp.synchronize()

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        import cupyx  # noqa: PLC0415

        with self._guard(f"allocating pinned host memory for {shape} {np.dtype(dtype)}"):
            return cupyx.empty_pinned(shape, dtype=dtype)

    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]:
        """Seconds per call between CUDA events recorded on the current stream around ``fn``."""
        out: list[float] = []
        with self._cp:
            self.synchronize()
            stream = cupy.cuda.get_current_stream()
            for _ in range(repeat):
                start, end = cupy.cuda.Event(), cupy.cuda.Event()
                start.record(stream)
                fn()
                end.record(stream)
                end.synchronize()
                out.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        return out

    # -- matmul ---------------------------------------------------------------------------------
    def matmul(self, a: Any, b: Any) -> Any:
        with self._guard(f"multiplying {a.shape} @ {b.shape} ({a.dtype})"), _blas_mode(a.dtype, self._cc_int):
            if a.dtype == F16 and a.ndim <= 2 and b.ndim <= 2:
                rows_a = a.shape[0] if a.ndim == 2 else 1
                cols_b = b.shape[1] if b.ndim == 2 else 1
                if rows_a == 1 and cols_b == 1:
                    # CuPy computes a single dot product with a reduction kernel that rounds each
                    # product to float16; xdev's float16 accumulates in float32 everywhere.
                    return cupy.matmul(a.astype(F32), b.astype(F32)).astype(F16)
            return cupy.matmul(a, b)

    @property
    def _cc_int(self) -> int:
        return self.cc[0] * 10 + self.cc[1]

    # -- conv2d ---------------------------------------------------------------------------------
    def unavailable_reason(self, algorithm: str) -> str | None:
        if algorithm == "cudnn" and "cudnn" not in self.conv_algorithms:
            return self._cudnn_reason
        return None

    def conv2d(self, x: Any, w: Any, bias: Any | None, p: ConvParams, algorithm: str) -> tuple[Any, str]:
        algo = algorithm  # xdev._ops has checked it against conv_algorithms
        if algo == "auto":
            algo = "cudnn" if "cudnn" in self.conv_algorithms else "gemm"
        what = f"running conv2d ({algo}) on x {tuple(x.shape)} with w {tuple(w.shape)} ({x.dtype})"
        with self._guard(what), _blas_mode(x.dtype, self._cc_int):
            y = cupy.empty(p.out_shape, x.dtype)
            if y.size == 0:
                return y, algo
            if p.K == 0:  # no input channels: only the bias remains
                if bias is None:
                    y.fill(0)
                else:
                    y[...] = bias.reshape(1, p.O, 1, 1)
                return y, algo
            if algo == "cudnn":
                try:
                    self._cudnn.conv2d(x, w, bias, p, y)
                    return y, "cudnn"
                except CudnnUnsupported as e:
                    if algorithm != "auto":
                        raise ValueError(
                            f"cuDNN cannot run this convolution on {self.key} under xdev's numeric rules "
                            f"(x {tuple(x.shape)}, w {tuple(w.shape)}, {x.dtype}, stride {p.stride}, "
                            f"padding {p.pad}, dilation {p.dilation}, groups {p.groups}): {e}; use "
                            f"algorithm='gemm' or 'direct'"
                        ) from None
                    algo = "gemm"
            if algo == "gemm":
                _plan.run_gemm(cupy, self._launch, x, w, bias, p, y)
            else:
                _plan.run_direct(cupy, self._launch, x, w, bias, p, y)
            return y, algo

    peak_method = "estimate: SMs x lanes x 2 x max clock"

    def peak_gflops(self, dtype: np.dtype = F32) -> float | None:
        """Estimated from the SM count and maximum clock (see info()['peak_gflops_est'])."""
        return self.info().get("peak_gflops_est", {}).get(np.dtype(dtype).name)

    def _launch(self, plan: _plan.Launch, arrays: dict[str, Any]) -> None:
        self.kernels.launch(plan, arrays)

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
        }
        if clock_khz and sms:
            # At the maximum clock; datasheet figures (machine.datasheet_gflops) are the reference.
            out["peak_gflops_est"] = cuda_peak_estimate(self.cc, sms, clock_khz / 1e6)
        if mem_khz and bus_bits:
            out["peak_bandwidth_gbs_est"] = 2 * mem_khz * 1e3 * bus_bits / 8 / 1e9
        return out
