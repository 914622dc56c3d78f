"""OpenCL devices: discovery, the selector, and the Device implementation."""
from __future__ import annotations

import atexit
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import pyopencl as cl
import pyopencl.tools

from xdev.contract import (F32, F64, FLOAT_DTYPES, BackendStatus, BackendUnavailable, ConvParams, Device,
                           EXACT_DTYPES, is_exact)
from xdev.contract import env, fork
from xdev.contract.kernel_cache import KernelCache
from xdev.contract.shapes import round_up
from . import array as cla
from . import backward, conv, gemm, isa, params, proof, tc
from .array import CLArray
from .host_memory import HostMemory
from .kernels import build_program, convert_options, type_options
from .staging import OpenCLStager, map_host_buffer

PROBE_SOURCE = "__kernel void probe(__global float* a) { a[get_global_id(0)] *= 2.0f; }"


@dataclass(frozen=True)
class Candidate:
    p: int
    d: int
    platform: cl.Platform
    device: cl.Device

    @property
    def key(self) -> str:
        return f"opencl:{self.p}:{self.d}"

    @property
    def label(self) -> str:
        return f"{self.device.name.strip()} ({short_version(self.platform.version)})"

    @property
    def is_gpu(self) -> bool:
        return bool(self.device.type & cl.device_type.GPU)


def short_version(version: str) -> str:
    """'OpenCL 3.0 PoCL 3.1+debian  Linux, ..., LLVM 15.0.6, ...' -> 'PoCL 3.1+debian, LLVM 15.0.6'."""
    words = version.replace(",", " ").split()
    core = " ".join(words[2:4]) if len(words) >= 4 and words[0] == "OpenCL" else version.strip()
    llvm = re.search(r"LLVM [0-9.]+", version)
    return core + (f", {llvm.group(0)}" if llvm else "")


def candidates() -> tuple[Candidate, ...]:
    """Every OpenCL device of every platform (enumerated once per process)."""
    fork.check("opencl")  # BackendUnavailable in a fork() child of a process that enumerated them
    return _candidates()


@lru_cache(maxsize=1)
def _candidates() -> tuple[Candidate, ...]:
    fork.driver_opened("opencl", "OpenCL", "its calls block forever there")
    env.prepare_pocl()  # PoCL reads POCL_AFFINITY when the platforms are enumerated
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:
        raise BackendUnavailable(
            f"no OpenCL platform found ({e}); install one: pip install \"xdev[opencl]\" brings "
            f"PoCL for the CPU, GPU vendors ship their own OpenCL drivers"
        ) from None
    out = []
    for p, plat in enumerate(platforms):
        try:
            devs = plat.get_devices()
        except cl.Error:
            devs = []
        out.extend(Candidate(p, d, plat, dev) for d, dev in enumerate(devs))
    return tuple(out)


_usable: dict[str, str | None] = {}
_contexts: dict[str, cl.Context] = {}  # the probe's context, kept for the device to use
_widths: dict[str, int] = {}  # vector width the proof settled on, per device key
_tc_failures: dict[str, str] = {}  # why the proof turned a device's tensor-core GEMM off


class _Shim:
    """A device before it is opened, as params.params_for reads it (protocol.DeviceDescription):
    at vector width `vw`, given what the proof learned of its compiler's target, if anything."""

    def __init__(self, c: Candidate, vw: int | None = None, compiler: dict[str, str] | None = None) -> None:
        self.cand, self.cl_device, self.is_cpu = c, c.device, not c.is_gpu
        self._vector_width = vw
        self.target = cpu_target(c, vw, compiler)


def cpu_target(c: Candidate, vw: int | None, compiler: dict[str, str] | None = None) -> isa.Target | None:
    """A CPU device's compiler target (isa.py); None for GPUs."""
    if c.is_gpu:
        return None
    width = vw or int(c.device.preferred_vector_width_float)
    return isa.target(c.device.name, width, compiler if compiler is not None else proof.compiler_targets.get(c.key))


def unusable_reason(c: Candidate) -> str | None:
    """None if the device builds and runs xdev's kernels (proven in a child process), else why not."""
    if c.key in _usable:
        return _usable[c.key]
    reason = None
    try:
        ctx = cl.Context([c.device])
        # A compiler that fails politely (e.g. "unknown target CPU") says so here, in-process.
        cl.Program(ctx, PROBE_SOURCE).build()
    except cl.Error as e:
        msg = str(e)
        reason = f"{c.key} {c.label} cannot build kernels: " + _first_error_line(msg)
        if "unknown target CPU" in msg:
            reason += " -- its compiler is older than this CPU. " + proof.FIX[0].upper() + proof.FIX[1:]
    else:
        family = kernel_family(not c.is_gpu)
        vw, reason = proof.prove(c, family, params.params_for(_Shim(c, compiler={})),
                                 lambda vw, compiler: params.params_for(_Shim(c, vw, compiler)))
        if reason is None:
            _contexts[c.key] = ctx
            _widths[c.key] = int(vw)  # type: ignore[arg-type]
            tc_failure = proof.tc_failure(c)
            if tc_failure:
                _tc_failures[c.key] = tc_failure
    _usable[c.key] = reason
    return reason


def _first_error_line(msg: str) -> str:
    for line in msg.splitlines():
        if "error" in line.lower() and "clBuildProgram" not in line:
            return line.strip()
    return msg.strip().splitlines()[0] if msg.strip() else "unknown error"


def _select(selector: str | None) -> list[Candidate]:
    """Candidates matching a selector, in preference order (GPUs first by default)."""
    cands = list(candidates())
    if not cands:
        raise BackendUnavailable(
            "OpenCL has platforms but no devices; install a driver (pip install \"xdev[opencl]\" "
            "brings PoCL for the CPU)"
        )
    if selector is None or selector.strip() == "":
        return [c for c in cands if c.is_gpu] + [c for c in cands if not c.is_gpu]
    sel = selector.strip()
    parts = sel.split(":")
    if all(x.isdigit() for x in parts) and len(parts) <= 2:
        p = int(parts[0])
        matches = [c for c in cands if c.p == p and (len(parts) == 1 or c.d == int(parts[1]))]
    else:
        low = sel.lower()
        matches = [
            c for c in cands
            if low in f"{c.platform.name} {c.platform.version} {c.device.name}".lower()
        ]
    if not matches:
        listing = "; ".join(f"{c.key} = {c.label}" for c in cands)
        if all(x.isdigit() for x in parts) and len(parts) <= 2:
            n_plat = len({c.p for c in cands})
            where = (f"platform index {parts[0]} is out of range (there are {n_plat} platforms)"
                     if not any(c.p == int(parts[0]) for c in cands) else
                     f"device index {parts[1]} is out of range on platform {parts[0]} (it has "
                     f"{sum(1 for c in cands if c.p == int(parts[0]))} devices)")
            raise ValueError(f"OpenCL selector {selector!r}: {where}; valid devices: {listing}")
        raise ValueError(
            f"no OpenCL device matches {selector!r}; use 'opencl:P:D' indexes or a case-insensitive "
            f"part of the platform or device name. Devices: {listing}"
        )
    return matches


def open_device(selector: str | None) -> OpenCLDevice:
    if selector is None and env.pyopencl_ctx():
        selector = env.pyopencl_ctx()
    matches = _select(selector)
    reasons = []
    for c in matches:
        why = unusable_reason(c)
        if why is None:
            return OpenCLDevice(c)
        reasons.append(why)
    raise BackendUnavailable("no usable OpenCL device: " + " | ".join(reasons))


def probe() -> BackendStatus:
    try:
        cands = candidates()
    except BackendUnavailable as e:
        return BackendStatus(False, str(e), ())
    good = [c for c in cands if unusable_reason(c) is None]
    bad = [unusable_reason(c) for c in cands if unusable_reason(c) is not None]
    if not good:
        why = " | ".join(b for b in bad if b) or "no OpenCL devices found"
        return BackendStatus(False, why, ())
    reason = f"pyopencl {cl.VERSION_TEXT}; " + "; ".join(f"{c.key}: {c.label}" for c in good)
    if bad:
        reason += " (skipped: " + " | ".join(b for b in bad if b) + ")"
    return BackendStatus(True, reason, tuple(c.key for c in good))


def _finish_at_exit(queue: cl.CommandQueue) -> None:
    """Let the work queued on a device end before the process does. A process that exited with
    kernels queued on PoCL crashed now and then (SIGSEGV: a PoCL worker thread compiling a
    kernel in LLVM while the exit handlers unloaded the libraries)."""
    if fork.inherited("opencl"):
        return  # a fork() child cannot use the driver (fork.py): finishing would block forever
    try:
        queue.finish()
    except Exception:
        pass  # at exit a failure has nobody to report to; the crash it prevents is what matters


class OpenCLDevice(Device):
    backend = "opencl"
    conv_algorithms = ("gemm", "direct")
    exact_conv_algorithms = ("direct",)  # conv_int.cl

    def __init__(self, cand: Candidate, vector_width: int | None = None) -> None:
        self.cand = cand
        self.cl_device = cand.device
        self.key = cand.key
        self.name = cand.label
        self.is_cpu = not cand.is_gpu
        self.family = kernel_family(self.is_cpu)
        self.ctx = _contexts.get(cand.key) or cl.Context([cand.device])
        # Profiling on, so elapsed() times with device events as the CUDA backend does
        # (measured: no cost on PoCL, within 2% noise on matmul+conv).
        self.queue = cl.CommandQueue(self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self._event_timing = True  # off if the driver gives markers no profiling info
        # Built once per (source file, options) on this device; kernels once per name too.
        self.programs: KernelCache[cl.Program] = KernelCache()
        self.kernels: KernelCache[cl.Kernel] = KernelCache()
        self.pool = cl.tools.MemoryPool(cl.tools.ImmediateAllocator(self.queue))
        exts = cand.device.extensions.split()
        self.has_fp64 = "cl_khr_fp64" in exts
        self.has_fp16 = "cl_khr_fp16" in exts
        # 64-bit integers are optional only in OpenCL's embedded profile.
        self.has_int64 = "EMBEDDED" not in cand.device.profile or "cles_khr_int64" in exts
        self.max_alloc = int(cand.device.max_mem_alloc_size)
        self.global_mem = int(cand.device.global_mem_size)
        self.pool_cap = env.opencl_pool_cap(self.global_mem)
        # A CPU device's memory is the process's: checked against its real limits (host_memory.py).
        self.host_memory = HostMemory(f"{self.key} ({self.name})") if self.is_cpu else None
        self._peak: dict[np.dtype, float] = {}
        # Conv tap-offset tables per geometry (conv.tap_offsets): they live and go with the device.
        self.conv_offsets: dict[tuple, CLArray] = {}
        self._lock = threading.Lock()
        self._vector_width = vector_width if vector_width is not None else _widths.get(cand.key)
        # What the CPU compiler targets (instruction set, vector registers): the tile follows it.
        self.target = cpu_target(cand, self._vector_width)
        # The tensor-core GEMM (tc.py): None where it runs, else why not. force_tf32 (None:
        # the user's switch) lets the proof and the tuner pick the float32 mode themselves.
        self.tc_reason: str | None = tc.support(cand.platform.name, cand.device) if not self.is_cpu else \
            "not a GPU"
        if self.tc_reason is None and cand.key in _tc_failures:
            self.tc_reason = _tc_failures[cand.key]
        self.force_tf32: bool | None = None
        self.reload_params()
        atexit.register(_finish_at_exit, self.queue)

    def reload_params(self) -> None:
        """Kernel parameters: derived, shipped database, tuning cache, and the proof's vector width."""
        self.params = params.params_for(self)
        # The proof (proof.py) may have found the preferred vector width broken on this
        # device's compiler and settled on a narrower one.
        vw = self._vector_width
        if vw is not None and vw != self.params["gemm"]["VW"]:
            self.params = proof.with_width(self.params, vw)

    # -- dtypes and memory --------------------------------------------------------------
    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype == F64 and not self.has_fp64:
            raise TypeError(
                f"{self.key} ({self.name}) has no cl_khr_fp64: float64 is not supported there; "
                f"use float32, or a device with double precision (see xdev.available_backends())"
            )
        if dtype.itemsize == 8 and dtype.kind in "iu" and not self.has_int64:
            raise TypeError(
                f"{self.key} ({self.name}) is an embedded-profile device without cles_khr_int64: "
                f"{dtype} is not supported there; use a 32-bit integer type, or backend='numpy'")
        if dtype not in FLOAT_DTYPES and dtype not in EXACT_DTYPES:
            raise TypeError(f"{self.key} computes in float16 (storage), float32, float64, signed and "
                            f"unsigned integers of 8 to 64 bits, or bool; received {dtype}")

    def acc_dtype(self, dtype: np.dtype) -> np.dtype:
        """float16 is storage only (kernels compute in float). With TF32 on (tc.mode), float32
        products use TF32 inputs (10-bit mantissa): the reported float16 has TF32's unit
        roundoff (2^-11), as on the CUDA backend, so error bounds stay honest."""
        if is_exact(dtype):
            return np.dtype(dtype)  # integers and bool: exact, modulo 2**bits (common.cl's XT types)
        if dtype == F32 and tc.mode(self, dtype) == 32:
            return np.dtype(np.float16)
        return F64 if dtype == F64 else F32

    def disable_tc(self, reason: str) -> None:
        """Stop using the tensor-core GEMM on this device (its kernel failed to build)."""
        import warnings

        self.tc_reason = reason
        warnings.warn(f"xdev: {self.key} ({self.name}): tensor-core GEMM off, the other GPU kernels "
                      f"run instead: {reason}", RuntimeWarning, stacklevel=3)

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        """What a large matmul of `dtype` runs as here (the benchmark's numerics column)."""
        dtype = np.dtype(dtype)
        m = tc.mode(self, dtype)
        if m is not None:
            mode = "tf32" if m == 32 else "fp16"
            return {"numeric_mode": mode, "numerics": f"{mode}, tensor cores (mma.sync through inline PTX)"}
        mode = {np.dtype(np.float16): "fp16-storage-fp32-compute", F64: "fp64"}.get(dtype, "strict-fp32")
        return {"numeric_mode": mode, "numerics": f"{mode}, FMA units"}

    def alloc(self, nbytes: int) -> Any:
        fork.check("opencl")  # (so is every call below that reaches the driver: fork.py)
        if nbytes > self.max_alloc:
            raise MemoryError(
                f"{self.key} ({self.name}): cannot allocate {nbytes} bytes in one buffer; the device "
                f"allows at most {self.max_alloc} bytes per buffer ({self.global_mem} bytes in all)"
            )
        pool = self.pool
        if pool.managed_bytes + nbytes > self.global_mem:
            pool.free_held()  # the pool's spare blocks first, before the device runs out
        if pool.active_bytes + nbytes > self.global_mem:
            # PoCL never fails an allocation (it is host memory): without this check a
            # process grew past the device's reported memory into the OOM killer.
            raise MemoryError(
                f"{self.key} ({self.name}): out of device memory allocating {nbytes} bytes: "
                f"{pool.active_bytes} bytes are in use by live arrays and the device has "
                f"{self.global_mem}; free arrays you no longer need (del, or let them go out of scope)"
            )
        self.check_host_memory(nbytes)
        try:
            buf = pool.allocate(max(nbytes, 1))
        except (cl.MemoryError, cl.RuntimeError) as e:
            pool.free_held()
            raise MemoryError(
                f"{self.key} ({self.name}): out of device memory allocating {nbytes} bytes ({e})"
            ) from None
        if pool.managed_bytes - pool.active_bytes > self.pool_cap:
            pool.free_held()  # held (freed, kept for reuse) bytes stay under the cap
        return buf

    def check_host_memory(self, nbytes: int) -> None:
        """On a CPU device, MemoryError if ``nbytes`` more would pass one of the process's
        memory limits (before PoCL, which aborts); nothing on a GPU."""
        if self.host_memory is not None:
            self.host_memory.check(nbytes, self.pool.free_held)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> CLArray:
        shape = tuple(int(n) for n in shape)
        size = int(np.prod(shape, dtype=np.int64))
        buf = self.alloc(size * dtype.itemsize) if size else None
        return CLArray(buf, 0, shape, cla.c_strides(shape), np.dtype(dtype))

    def program(self, file: str, options: dict[str, int]) -> cl.Program:
        """Kernel file `file` built with `-D` options (memoized; KernelBuildError if it fails)."""
        return self.programs.get(
            (file, tuple(sorted(options.items()))),
            lambda: build_program(self.ctx, f"{self.key} {self.name}", file, options),
        )

    def kernel(self, file: str, name: str, options: dict[str, int]) -> cl.Kernel:
        def make() -> cl.Kernel:
            try:
                return cl.Kernel(self.program(file, options), name)
            except cl.LogicError as e:
                if "INVALID_KERNEL_NAME" not in str(e):
                    raise
                # A half-written entry in PoCL's kernel cache (a process killed mid-build)
                # yields a program without kernels: build it under other options (PoCL keys
                # its cache by them). Fixed values, memoized like any program, so the cache
                # gains at most two entries however many processes meet the broken one.
                for attempt in (1, 2):
                    try:
                        return cl.Kernel(self.program(file, {**options, "XDEV_FRESH_BUILD": attempt}), name)
                    except cl.LogicError as again:
                        if "INVALID_KERNEL_NAME" not in str(again):
                            raise
                raise RuntimeError(
                    f"{self.key} {self.name}: {file} builds without kernel {name!r} even when "
                    f"rebuilt; PoCL's kernel cache is damaged: delete its folder (POCL_CACHE_DIR, "
                    f"by default ~/.cache/pocl) and run again"
                ) from e

        return self.kernels.get((file, name, tuple(sorted(options.items()))), make)

    def launch(self, file: str, name: str, options: dict[str, int], global_size: tuple[int, ...],
               local_size: tuple[int, ...] | None, *args: Any) -> cl.Event:
        """Enqueue kernel `name` of `file` (built with `options`) on this device's queue."""
        fork.check("opencl")
        k = self.kernel(file, name, options)
        # A cl.Kernel holds its arguments: setting them and enqueueing must not interleave
        # between threads that share this device.
        with self._lock:
            return k(self.queue, global_size, local_size, *args)

    # -- transfers ----------------------------------------------------------------------
    def upload(self, host: np.ndarray) -> CLArray:
        host = np.asarray(host, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        out = self.empty(host.shape, host.dtype)
        if out.buf is not None:
            cl.enqueue_copy(self.queue, out.buf, host, is_blocking=True)
        return out

    borrow = upload

    def download(self, a: CLArray) -> np.ndarray:
        fork.check("opencl")
        if a.size == 0:
            return np.empty(a.shape, a.dtype)
        item = a.dtype.itemsize
        if a.is_c_contiguous():
            out = np.empty(a.shape, a.dtype)
            cl.enqueue_copy(self.queue, out, a.buf, src_offset=a.offset * item, is_blocking=True)
            return out
        lo, hi = a.span()
        tmp = np.empty(hi - lo + 1, a.dtype)
        cl.enqueue_copy(self.queue, tmp, a.buf, src_offset=lo * item, is_blocking=True)
        view = np.lib.stride_tricks.as_strided(
            tmp[a.offset - lo :], a.shape, tuple(s * item for s in a.strides), writeable=False
        )
        return np.array(view, copy=True)

    def download_into(self, a: CLArray, out: np.ndarray) -> None:
        fork.check("opencl")
        if a.size and a.is_c_contiguous() and out.flags.c_contiguous and out.dtype == a.dtype:
            # Straight into the caller's memory: from pinned_empty, a DMA at full speed on GPUs.
            cl.enqueue_copy(self.queue, out, a.buf, src_offset=a.offset * a.dtype.itemsize, is_blocking=True)
        else:
            np.copyto(out, self.download(a))

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """Host memory of a mapped CL_MEM_ALLOC_HOST_PTR buffer (pinned on GPU drivers)."""
        fork.check("opencl")
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.check_host_memory(nbytes)
        view = map_host_buffer(self, nbytes)
        return None if view is None else view.view(dtype).reshape(shape)

    def stager(self, slots: int) -> Any:
        fork.check("opencl")
        return OpenCLStager(self, slots)

    # -- views and copies ---------------------------------------------------------------
    def transpose(self, a: CLArray, axes: tuple[int, ...]) -> CLArray:
        return cla.transpose(a, axes)

    def getitem(self, a: CLArray, key: tuple[Any, ...]) -> CLArray:
        return cla.getitem(a, key)

    def reshape(self, a: CLArray, shape: tuple[int, ...]) -> CLArray:
        if not a.is_c_contiguous():
            a = self.astype(a, a.dtype)
        return a.with_view(a.offset, tuple(shape), cla.c_strides(tuple(shape)))

    def astype(self, a: CLArray, dtype: np.dtype) -> CLArray:
        """A contiguous copy of `a`, converted to `dtype`."""
        dtype = np.dtype(dtype)
        out = self.empty(a.shape, dtype)
        if out.size == 0:
            return out
        shape, (strides,) = cla.collapse(a.shape, a.strides)
        if len(shape) == 0:
            shape, strides = (1,), (0,)
        lead = shape[:-4] if len(shape) > 4 else ()
        tail, tstr = shape[-4:], strides[-4:]
        tail = (1,) * (4 - len(tail)) + tuple(tail)
        tstr = (0,) * (4 - len(tstr)) + tuple(tstr)
        n = int(np.prod(tail))
        # Between float types the float options; with an integer or bool side, NumPy's astype
        # conversions (common.cl's SRC_KIND/DST_KIND).
        opts = (type_options(a.dtype, dtype) if a.dtype.kind == "f" and dtype.kind == "f"
                else convert_options(a.dtype, dtype))
        for j, idx in enumerate(np.ndindex(*lead) if lead else [()]):
            off = a.offset + sum(i * s for i, s in zip(idx, strides[: len(lead)]))
            self.launch("copy.cl", "copy_cast", opts,
                        (round_up(n, 64),), None, out.buf, np.int64(j * n), a.buf, np.int64(off),
                        np.int64(tail[1]), np.int64(tail[2]), np.int64(tail[3]),
                        *(np.int64(s) for s in tstr), np.int64(n))
        return out

    def fill(self, out: CLArray, value: float) -> None:
        real = np.float64 if out.dtype == F64 else np.float32
        self.launch("copy.cl", "fill", type_options(out.dtype, out.dtype),
                    (round_up(out.size, 64),), None, out.buf, real(value), np.int64(out.size))

    def synchronize(self) -> None:
        fork.check("opencl")
        self.queue.finish()
        if self.pool.managed_bytes - self.pool.active_bytes > self.pool_cap:
            self.pool.free_held()

    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]:
        """Seconds per call between profiling markers enqueued around ``fn`` (device clock).

        Like CUDA events: the span from the end of a marker before ``fn``'s work to the end of
        one after it, so the host's wake-up latency after the last kernel is not counted.
        """
        if not self._event_timing:
            return super().elapsed(fn, repeat)
        out: list[float] = []
        self.synchronize()
        for _ in range(repeat):
            start = cl.enqueue_marker(self.queue)
            fn()
            end = cl.enqueue_marker(self.queue)
            end.wait()
            try:
                out.append((end.profile.end - start.profile.end) * 1e-9)
            except cl.Error:  # CL_PROFILING_INFO_NOT_AVAILABLE: time this device on the host
                self._event_timing = False
                return super().elapsed(fn, repeat)
        return out

    @property
    def build_seconds(self) -> float:  # type: ignore[override]
        return self.programs.build_seconds

    # -- compute ------------------------------------------------------------------------
    def matmul(self, a: CLArray, b: CLArray) -> CLArray:
        return gemm.matmul(self, a, b)

    def conv2d(
        self, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, algorithm: str
    ) -> tuple[CLArray, str]:
        return conv.conv2d(self, x, w, bias, p, algorithm)

    def conv2d_backward(
        self, grad_y: CLArray, x: CLArray, w: CLArray, p: ConvParams, needs: frozenset[str], algorithm: str
    ) -> tuple[Any, Any, Any, str]:
        return backward.conv2d_backward(self, grad_y, x, w, p, needs, algorithm)

    peak_method = "calibrated FMA loop"

    def peak_gflops(self, dtype: np.dtype = F32, iters: int | None = None, repeat: int = 3) -> float:
        """Calibrated multiply-add rate (GFLOP/s) from a kernel of independent FMA chains."""
        dtype = np.dtype(dtype)
        calibrate = iters is None
        cached = self._peak.get(dtype) if calibrate else None
        if cached is not None:
            return cached
        vw = self.params["gemm"]["VWD" if dtype == F64 else "VW"] if self.is_cpu else 4
        items = int(self.cl_device.max_compute_units) * (64 if self.is_cpu else 2048)
        iters = iters or (20000 if self.is_cpu else 4000)
        # peak.cl writes one compute-type value (`real`: float, or double) per work-item,
        # whatever the storage dtype: float16 must not size the buffer (it overflowed it).
        real = np.float64 if dtype == F64 else np.float32
        out = self.alloc(items * np.dtype(real).itemsize)
        args = (out, np.int32(iters), real(0.999), real(1e-3))
        # On CPUs one work-item per work-group, so PoCL spreads them over all its threads
        # (left to choose, it may put all of them in one group: one core busy).
        local = (1,) if self.is_cpu else None
        opts = {**type_options(dtype, dtype), "VW": vw}
        self.launch("peak.cl", "fma_peak", opts, (items,), local, *args)
        self.queue.finish()
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.launch("peak.cl", "fma_peak", opts, (items,), local, *args)
            self.queue.finish()
            best = min(best, time.perf_counter() - t0)
        gf = items * iters * 12 * vw * 2 / best / 1e9
        if calibrate:
            self._peak[dtype] = gf
        return gf

    def info(self) -> dict[str, Any]:
        d = self.cl_device
        return {
            **super().info(),
            "platform": self.cand.platform.name.strip(),
            "platform_version": self.cand.platform.version.strip(),
            "driver": d.driver_version.strip(),
            "type": "CPU" if self.is_cpu else "GPU",
            "kernel_family": self.family,
            "compute_units": int(d.max_compute_units),
            "clock_mhz": int(d.max_clock_frequency),
            "global_mem_bytes": self.global_mem,
            "fp64": self.has_fp64,
            "fp16_arithmetic": self.has_fp16,
            "tensor_cores": self.tc_reason is None and self.family == "gpu",
            "tensor_core_reason": self.tc_reason or "",
            "tf32": tc.mode(self, F32) == 32,
            "pyopencl": cl.VERSION_TEXT,
            # The instruction set the CPU kernels are compiled for, which can differ from
            # the host's best (None on GPUs).
            "isa": self.target.isa if self.target else None,
            "vector_registers": self.target.vector_registers if self.target else None,
            "target_cpu": self.target.target_cpu if self.target else None,
            "isa_source": self.target.source if self.target else None,
            "params_source": params.summary(self.params, self.family),
            "params": self.params,
        }


def kernel_family(is_cpu: bool) -> str:
    """'cpu' (register-blocked, packed panels) or 'gpu' (local-memory tiles)."""
    v = env.opencl_kernels()
    if v == "auto":
        return "cpu" if is_cpu else "gpu"
    return v


def reset_tuning(selector: str | None, every: bool = False) -> list[tuple[str, str, Any]]:
    """Forget tuned parameters without opening a device; works on a corrupt cache file.

    The device `selector` selects (None: PYOPENCL_CTX's, else the default device), i.e. the
    one ``python -m xdev.tune`` with that selector tunes; with `every`, every device the
    selector matches (None: every OpenCL device).
    """
    if selector is None and not every and env.pyopencl_ctx():
        selector = env.pyopencl_ctx()
    matches = _select(selector)
    if not every and len(matches) > 1:
        # As open_device: the first that runs xdev's kernels (its proof verdict is cached).
        usable = [c for c in matches if unusable_reason(c) is None]
        if not usable:
            listing = "; ".join(f"{c.key} = {c.label}" for c in matches)
            raise BackendUnavailable(
                f"no usable OpenCL device matches {selector or 'opencl'!r}, so there is no default "
                f"device to reset; name one with --device opencl:P:D, or pass --all. Devices: {listing}")
        matches = usable[:1]
    return [(c.key, c.label, params.forget(_Shim(c))) for c in matches]  # type: ignore[arg-type]
