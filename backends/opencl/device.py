"""The OpenCL Device: memory, transfers, kernel launches and dispatch on one opened device."""
from __future__ import annotations

import atexit
import functools
import threading
import time
from typing import Any, Callable

import numpy as np
import pyopencl as cl
import pyopencl.tools

from xdev.contract import (F32, F64, FLOAT_DTYPES, BackendUnavailable, ConvParams, Device, EXACT_DTYPES,
                           is_exact)
from xdev.contract import env, fork
from xdev.contract.kernel_cache import KernelCache
from xdev.contract.shapes import round_up
from . import array as cla
from . import backward, conv, gemm, params, proof, tc
from .array import CLArray
from .discovery import (Candidate, _contexts, _select, _tc_failures, _widths, cpu_target, kernel_family,
                        unusable_reason)
from .host_memory import HostMemory
from .kernels import build_program, convert_options, type_options
from .staging import OpenCLStager, map_host_buffer


# PoCL compiles a kernel once per work-group size. Left to choose, it takes sizes that divide
# the grid (24 x 15, 1 x 683, 16 x 171, ...), so nearly every new shape compiled each kernel it
# ran again (0.1-0.3 s apiece on the CPU; 1022 builds in one run of the test suite). Powers of
# two from a cap keep it to a few sizes per kernel; a CPU runs a work-group as a loop on one
# thread, so its shape only sets how the grid is shared out.
CPU_GROUP_ITEMS = 256
# The compute kernels whose speed was measured and tuned with PoCL's own work-group choice (it
# sets the order in which one thread walks the tiles, and with it what stays in cache); a run
# with these sizes too was 3-12% slower (within noise, but on every layer). One build per shape;
# a grid that fits one work-group is split per compute unit (units_split).
POCL_GROUPS = frozenset({"gemm_packed", "conv_packed", "grad_w_rows"})


def cpu_local_size(global_size: tuple[int, ...], items: int = CPU_GROUP_ITEMS) -> tuple[int, ...]:
    """The work-group size for a grid on a CPU device: per dimension, first to last, the largest
    power of two that divides it and keeps the group within `items` work-items."""
    left = items
    local = []
    for g in global_size:
        n = 1
        while n * 2 <= left and g % (n * 2) == 0:
            n *= 2
        local.append(n)
        left //= n
    return tuple(local)


def units_split(global_size: tuple[int, ...], units: int, max_items: int) -> tuple[int, ...] | None:
    """For a POCL_GROUPS kernel: None (PoCL's own choice) unless the whole grid fits one
    work-group; then the grid split along one dimension (last first, as PoCL splits) into
    `units` groups, one per compute unit. PoCL makes such a grid one group and splits it only
    along dimensions whose parts keep its SIMD grain: (8, 266) stayed one group, one core
    busy (a 64 -> 64 3x3 conv at 112 x 112 ran 1.73x slower on 2 cores). None also where
    no dimension divides evenly."""
    if units < 2 or int(np.prod(global_size)) > max_items:
        return None
    for d in reversed(range(len(global_size))):
        if global_size[d] % units == 0:
            return tuple(g // units if i == d else g for i, g in enumerate(global_size))
    return None


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

    @functools.cached_property
    def _cpu_limits(self) -> tuple[int, int]:
        """(compute units, work-items per group): read once, launches consult them."""
        d = self.cl_device
        return int(d.max_compute_units), int(d.max_work_group_size)

    def launch(self, file: str, name: str, options: dict[str, int], global_size: tuple[int, ...],
               local_size: tuple[int, ...] | None, *args: Any) -> cl.Event:
        """Enqueue kernel `name` of `file` (built with `options`) on this device's queue."""
        fork.check("opencl")
        k = self.kernel(file, name, options)
        if local_size is None and self.is_cpu:
            units, max_items = self._cpu_limits
            local_size = (units_split(global_size, units, max_items) if name in POCL_GROUPS
                          else cpu_local_size(global_size, min(CPU_GROUP_ITEMS, max_items)))
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

    def peak_gflops(self, dtype: np.dtype = F32, iters: int | None = None, repeat: int = 3,
                    fresh: bool = False) -> float:
        """Calibrated multiply-add rate (GFLOP/s) from a kernel of independent FMA chains;
        ``fresh``: calibrate again and keep the higher figure (another process's burst can
        only make a calibration slower)."""
        dtype = np.dtype(dtype)
        calibrate = iters is None
        cached = self._peak.get(dtype) if calibrate else None
        if cached is not None and not fresh:
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
            gf = max(gf, cached or 0.0)
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
