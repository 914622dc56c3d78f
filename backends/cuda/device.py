"""CUDA device through CuPy: cuBLAS matmul, and conv2d through cuDNN, im2col + cuBLAS or a direct kernel."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Callable

import cupy
import numpy as np

from xdev.contract import F16, F32, F64, FLOAT_DTYPES, BackendStatus, BackendUnavailable, ConvParams, Device, env
from xdev.contract.device import DL_CUDA, DL_CUDA_MANAGED
from xdev.contract.machine import cuda_peak_estimate
from . import _gemm, _plan, kernels, staging
from .cudnn_conv import CudnnConv, CudnnUnsupported, frontend, versions

ALGORITHMS = ("cudnn", "gemm", "direct")


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
    return CudaDevice(index)  # the registry keeps one per key ('cuda' and 'cuda:0' are one)


# ---- cuBLAS: xdev's own handle and GEMM calls, the compute type in each call -------------------
_cublas_mod: Any = None


def _cublas() -> Any:
    """CuPy's low-level cuBLAS binding, imported once (an import statement per call costs ~1 us)."""
    global _cublas_mod
    if _cublas_mod is None:
        from cupy_backends.cuda.libs import cublas  # noqa: PLC0415  (needs the cuBLAS library)

        _cublas_mod = cublas
    return _cublas_mod


# cudaDataType (library_types.h), cublasComputeType_t (cublas_api.h): the values CuPy's
# cupy_backends.cuda.libs.cublas and runtime enums use.
_CUDA_R = {F16: 2, F32: 0, F64: 1}  # CUDA_R_16F, CUDA_R_32F, CUDA_R_64F
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _COMPUTE_64F = 68, 77, 70
_GEMM_DEFAULT = -1  # CUBLAS_GEMM_DEFAULT
_DEFAULT_MATH = 0  # CUBLAS_DEFAULT_MATH: no TF32 unless the compute type asks for it
# alpha = 1, beta = 0 in the compute type's precision, in host memory (pointer mode host).
# The arrays stay alive for the process; their addresses are taken once (``.ctypes`` costs ~1 us).
_SCALAR_ARRAYS = [np.ones(1, np.float32), np.zeros(1, np.float32), np.ones(1, np.float64), np.zeros(1, np.float64)]
_SCALARS = {np.dtype(np.float32): (_SCALAR_ARRAYS[0].ctypes.data, _SCALAR_ARRAYS[1].ctypes.data),
            np.dtype(np.float64): (_SCALAR_ARRAYS[2].ctypes.data, _SCALAR_ARRAYS[3].ctypes.data)}


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
        self._cudnn = CudnnConv(index, self.cc, self.name)
        self._tls = threading.local()  # this thread's cuBLAS handle (cuBLAS handles are per thread)
        self._gemm_plans: dict[tuple, Any] = {}
        self.kernels = kernels.Kernels(f"{self.key} {self.name}")
        self._cudnn_bwd: Any = None  # CudnnBackward, made on first conv2d_backward

    @property
    def build_seconds(self) -> float:  # type: ignore[override]
        """Seconds spent so far compiling xdev's kernels (NVRTC) and building cuDNN plans."""
        bwd = self._cudnn_bwd.build_seconds if self._cudnn_bwd is not None else 0.0
        return self.kernels.build_seconds + self._cudnn.build_seconds + bwd

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

    def _translate(self, e: BaseException, what: Callable[[], str]) -> BaseException:
        """What _guard raises for ``e``, for hot paths that skip the context manager.

        ``what`` builds the operation's description only when an error needs it.
        """
        if isinstance(e, cupy.cuda.memory.OutOfMemoryError):
            return MemoryError(self._oom_message(what(), str(e)))
        if isinstance(e, cupy.cuda.runtime.CUDARuntimeError) and getattr(e, "status", None) == 2:
            return MemoryError(self._oom_message(what(), str(e)))
        if type(e).__name__ == "CUBLASError" and "ALLOC_FAILED" in str(e):
            return MemoryError(self._oom_message(what(), f"cuBLAS could not allocate its workspace ({e})"))
        return e

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

    # -- DLPack and the CUDA array interface ----------------------------------------------------
    # xdev queues its work on CuPy's current stream of the device, so CuPy's own exporters and
    # importers, called on this device, implement the DLPack stream rules: an exporter makes the
    # consumer's stream wait for that stream, an importer passes it as the consumer stream.
    def dlpack_device(self) -> tuple[int, int]:
        return (DL_CUDA, self.index)

    def to_dlpack(self, data: Any, *, stream: Any, max_version: tuple[int, int] | None,
                  copy: bool | None) -> Any:
        with self._guard(f"exporting {tuple(data.shape)} {data.dtype} through DLPack"):
            src = data.copy() if copy else data
            if max_version is None:
                return src.__dlpack__(stream=stream)
            try:
                return src.__dlpack__(stream=stream, max_version=max_version)
            except TypeError:  # CuPy 13: legacy capsules only, which every consumer reads
                return src.__dlpack__(stream=stream)

    def wrap_dlpack(self, obj: Any, src: tuple[int, int], copy: bool | None) -> Any | None:
        if not ((src[0] == DL_CUDA and src[1] == self.index) or src[0] == DL_CUDA_MANAGED):
            return None
        with self._guard("importing an array through DLPack"):
            data = cupy.from_dlpack(obj)
            return data.copy() if copy else data

    def cuda_array_interface(self, data: Any) -> dict[str, Any]:
        with self._cp:  # CuPy reports its current stream of this device (CAI v3 "stream")
            return data.__cuda_array_interface__

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
        try:
            with self._cp:
                return self._matmul(a, b)
        except Exception as e:
            raise self._translate(e, lambda: f"multiplying {a.shape} @ {b.shape} ({a.dtype})") from e

    def _matmul(self, a: Any, b: Any) -> Any:
        """numpy.matmul semantics on xdev's cuBLAS calls."""
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
        self._gemm_into(A, B, out=c)
        if a.ndim == 1 and b.ndim == 1:
            return c.reshape(())
        if a.ndim == 1:
            return c.reshape(batch + (N,))
        if b.ndim == 1:
            return c.reshape(batch + (M,))
        return c

    def _cublas_handle(self) -> int:
        h = getattr(self._tls, "handle", None)
        if h is None:
            cublas = _cublas()
            with self._cp:
                h = cublas.create()
                cublas.setMathMode(h, _DEFAULT_MATH)  # xdev's handle: nobody else changes its mode
            self._tls.handle = h
        return h

    def _gemm_into(self, a: Any, b: Any, out: Any) -> Any:
        """out[...] = a @ b for a (…, M, K), b (…, K, N), out (…, M, N) of the broadcast batch shape.

        One cublasGemmEx / cublasGemmStridedBatchedEx per outer batch index, on xdev's own
        handle with the compute type in the call: float32 stays FP32 (CUBLAS_COMPUTE_32F) unless
        XDEV_CUDA_TF32=1 (CUBLAS_COMPUTE_32F_FAST_TF32); float16 accumulates in float32.
        """
        dt = a.dtype
        key = (a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, dt.char)
        g = self._gemm_plans.get(key)
        if g is None:
            g = self._gemm_plan(a, b, out)
            if not isinstance(g, str):
                if len(self._gemm_plans) > 4096:
                    self._gemm_plans.clear()
                self._gemm_plans[key] = g
        if isinstance(g, str):  # an operand cuBLAS cannot read in place: a packed copy, planned again
            if g == "a":
                return self._gemm_into(cupy.ascontiguousarray(a), b, out)
            if g == "b":
                return self._gemm_into(a, cupy.ascontiguousarray(b), out)
            if g == "zero":
                out.fill(0)
                return out
            if g == "empty":
                return out
            tmp = cupy.empty(out.shape, dt)
            self._gemm_into(a, b, tmp)
            out[...] = tmp
            return out
        tf32 = dt == F32 and self.cc >= (8, 0) and env.cuda_tf32()
        if dt == F64:
            compute, (one, zero) = _COMPUTE_64F, _SCALARS[F64]
        else:
            compute, (one, zero) = (_COMPUTE_32F_FAST_TF32 if tf32 else _COMPUTE_32F), _SCALARS[F32]
        h = self._cublas_handle()
        cublas = _cublas()
        # cuBLAS runs on its handle's stream, the legacy default until told: bind CuPy's
        # current stream (where xdev queues everything else), again only when it changes.
        stream = cupy.cuda.get_current_stream().ptr
        if getattr(self._tls, "stream", None) != stream:
            cublas.setStream(h, stream)
            self._tls.stream = stream
        code = _CUDA_R[dt]
        isz = dt.itemsize
        pa, pb, pc = a.data.ptr, b.data.ptr, out.data.ptr
        alpha, beta = one, zero
        for ob, oa, oc in g.outer:
            if g.batch == 1:
                cublas.gemmEx(h, g.op_first, g.op_second, g.m, g.n, g.k, alpha, pb + ob * isz, code, g.ld_first,
                              pa + oa * isz, code, g.ld_second, beta, pc + oc * isz, code, g.ldc, compute,
                              _GEMM_DEFAULT)
            else:
                cublas.gemmStridedBatchedEx(
                    h, g.op_first, g.op_second, g.m, g.n, g.k, alpha, pb + ob * isz, code, g.ld_first,
                    g.stride_first, pa + oa * isz, code, g.ld_second, g.stride_second, beta, pc + oc * isz, code,
                    g.ldc, g.stride_c, g.batch, compute, _GEMM_DEFAULT)
        return out

    @staticmethod
    def _gemm_plan(a: Any, b: Any, out: Any) -> Any:
        return _gemm.plan_arrays(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, a.dtype.itemsize)

    # -- conv2d ---------------------------------------------------------------------------------
    def unavailable_reason(self, algorithm: str) -> str | None:
        if algorithm == "cudnn" and "cudnn" not in self.conv_algorithms:
            return self._cudnn_reason
        return None

    def conv2d(self, x: Any, w: Any, bias: Any | None, p: ConvParams, algorithm: str) -> tuple[Any, str]:
        return self._conv_call("conv2d", algorithm, x, w, self._conv2d, x, w, bias, p, algorithm)

    def _conv_call(self, op: str, algorithm: str, x: Any, w: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this device, CuPy's errors translated to xdev's (naming op and operands)."""
        try:
            with self._cp:
                return fn(*args)
        except Exception as e:
            err = self._translate(e, lambda: f"running {op} ({algorithm}) on x {tuple(x.shape)} with w "
                                             f"{tuple(w.shape)} ({x.dtype})")
            if err is e:
                raise
            raise err from e

    def _conv2d(self, x: Any, w: Any, bias: Any | None, p: ConvParams, algorithm: str) -> tuple[Any, str]:
        algo = algorithm  # xdev._ops has checked it against conv_algorithms
        if algo == "auto":
            algo = "cudnn" if "cudnn" in self.conv_algorithms else "gemm"
        if p.N * p.O * p.Ho * p.Wo == 0:
            return cupy.empty(p.out_shape, x.dtype), algo
        if p.K == 0:  # no input channels: only the bias remains
            y = cupy.zeros(p.out_shape, x.dtype)
            if bias is not None:
                y[...] = bias.reshape(1, p.O, 1, 1)
            return y, algo
        if algo == "cudnn":
            try:
                return self._cudnn.conv2d(x, w, bias, p), "cudnn"
            except CudnnUnsupported as e:
                if algorithm != "auto":
                    raise ValueError(
                        f"cuDNN cannot run this convolution on {self.key} under xdev's numeric rules "
                        f"(x {tuple(x.shape)}, w {tuple(w.shape)}, {x.dtype}, stride {p.stride}, "
                        f"padding {p.pad}, dilation {p.dilation}, groups {p.groups}): {e}; use "
                        f"algorithm='gemm' or 'direct'"
                    ) from None
                algo = "gemm"
        y = cupy.empty(p.out_shape, x.dtype)
        if algo == "gemm":
            _plan.run_gemm(cupy, self._launch, x, w, bias, p, y, matmul=self._gemm_out)
        else:
            _plan.run_direct(cupy, self._launch, x, w, bias, p, y)
        return y, algo

    def _gemm_out(self, a: Any, b: Any, out: Any) -> Any:
        return self._gemm_into(a, b, out)

    def conv_numerics(self, algorithm: str, dtype: np.dtype) -> dict[str, Any]:
        """The numerics a conv2d of ``algorithm`` just ran with (the benchmark's honesty columns)."""
        dtype = np.dtype(dtype)
        tf32 = dtype == F32 and self.cc >= (8, 0) and env.cuda_tf32()
        mode = {F16: "fp16", F64: "fp64"}.get(dtype, "tf32" if tf32 else "strict-fp32")
        layout, fast = "nchw", False
        if algorithm == "direct" and dtype == F32:
            mode = "strict-fp32"  # xdev's own kernel computes in FP32 whatever the switch says
        if algorithm == "cudnn":
            c = self.cudnn_choice()
            if c is not None:
                mode, fast, layout = c["mode"], c["winograd_fft_allowed"], c["layout"]
                if c["input_layout"] != layout:
                    layout = f"{c['input_layout']}->{layout}"
        text = f"{mode}, {'Winograd/FFT allowed' if fast else 'no Winograd/FFT'}, {layout}"
        return {"numeric_mode": mode, "winograd_fft_allowed": fast, "layout": layout, "numerics": text}

    def cudnn_choice(self) -> dict[str, Any] | None:
        """What the latest cuDNN call ran: numeric mode, Winograd/FFT allowed, layout, plan (for the benchmark)."""
        ex = self._cudnn.last
        if ex is None:
            return None
        c = ex.choice
        return {
            "mode": ex.spec.mode, "winograd_fft_allowed": ex.spec.fast, "input_layout": ex.spec.x_layout,
            "layout": "nhwc" if ex.nhwc else "nchw", "bias": ("fused" if ex.fused else "separate")
            if ex.spec.has_bias else None, "plan": None if c is None else c.name,
            "plan_index": ex.index, "autotuned": bool(c is not None and c.candidates),
            "candidates": None if c is None else c.candidates,
        }

    def conv2d_backward(
        self, grad_y: Any, x: Any, w: Any, p: ConvParams, needs: frozenset[str], algorithm: str
    ) -> tuple[Any, Any, Any, str]:
        return self._conv_call("conv2d_backward", algorithm, x, w, self._conv2d_backward,
                               grad_y, x, w, p, needs, algorithm)

    def _conv2d_backward(self, grad_y: Any, x: Any, w: Any, p: ConvParams, needs: frozenset[str],
                         algorithm: str) -> tuple[Any, Any, Any, str]:
        algo = algorithm  # xdev._ops has checked it against conv_algorithms
        if algo == "auto":
            algo = "cudnn" if "cudnn" in self.conv_algorithms else "gemm"
        need_x, need_w = "x" in needs, "w" in needs
        gb = _plan.grad_bias(cupy, grad_y) if "bias" in needs else None
        trivial = _plan.trivial_backward(cupy, x, w, p, need_x, need_w)
        if trivial is not None or not (need_x or need_w):
            return (*(trivial or (None, None)), gb, algo)
        if algo == "cudnn":
            from .cudnn_backward import CudnnBackward

            if self._cudnn_bwd is None:
                self._cudnn_bwd = CudnnBackward(self.index, self.cc)
            try:
                return (*self._cudnn_bwd.backward(grad_y, x, w, p, need_x, need_w), gb, "cudnn")
            except CudnnUnsupported as e:
                if algorithm != "auto":
                    raise ValueError(
                        f"cuDNN cannot run this convolution's backward pass on {self.key} under xdev's "
                        f"numeric rules (x {tuple(x.shape)}, w {tuple(w.shape)}, {x.dtype}, stride "
                        f"{p.stride}, padding {p.pad}, dilation {p.dilation}, groups {p.groups}): {e}; "
                        f"use algorithm='gemm' or 'direct'"
                    ) from None
                algo = "gemm"
        if algo == "gemm":
            gx, gw = _plan.run_gemm_backward(cupy, self._launch, grad_y, x, w, p, need_x, need_w,
                                             matmul=self._gemm_out)
        else:
            gx, gw = _plan.run_direct_backward(cupy, self._launch, grad_y, x, w, p, need_x, need_w)
        return gx, gw, gb, algo

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
