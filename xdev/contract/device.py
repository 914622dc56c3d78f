"""The interface every backend implements: one Device subclass per backend."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
import time
from typing import Any, Callable

import numpy as np

from .shapes import ConvParams

# DLPack device types (dlpack.h DLDeviceType) that xdev meets.
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_OPENCL, DL_ROCM_HOST, DL_CUDA_MANAGED = 1, 2, 3, 4, 11, 13


@dataclass(frozen=True)
class BackendStatus:
    """What ``xdev.available_backends()`` reports for one backend."""

    available: bool
    reason: str
    devices: tuple[str, ...] = field(default_factory=tuple)


def host_timed(fn: Callable[[], Any], repeat: int, synchronize: Callable[[], None]) -> list[float]:
    """Host-clock seconds of each of ``repeat`` calls of ``fn``, ``synchronize()`` before the
    first and after each, so queued device work is inside the interval it belongs to."""
    out = []
    synchronize()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        synchronize()
        out.append(time.perf_counter() - t0)
    return out


# How an unpickled Device becomes this process's own device of that name: the registry
# (xdev._registry, the core) installs its lookup here, since the contract imports no core.
_device_by_key: Callable[[str], Device] | None = None


def set_device_lookup(lookup: Callable[[str], Device]) -> None:
    """Called once by the registry: ``lookup(key)`` returns the cached device for a selector."""
    global _device_by_key
    _device_by_key = lookup


def device_by_key(key: str) -> Device:
    """This process's device for ``key`` (what a pickled Device becomes when unpickled)."""
    if _device_by_key is None:  # cannot happen: importing xdev.contract imports xdev first
        raise RuntimeError("xdev's registry is not loaded; import xdev first")
    return _device_by_key(key)


class Device(abc.ABC):
    """One device of one backend. Arrays it returns are the backend's native arrays.

    ``backend`` is the backend name, ``key`` the canonical selector (``"opencl:1:0"``),
    ``name`` a human-readable device name. Instances are cached by the registry, so
    identity (``a is b``) means "same device".
    """

    backend: str
    key: str
    name: str
    conv_algorithms: tuple[str, ...]
    # The conv2d algorithms that run integer and bool data ("auto" picks one of them).
    exact_conv_algorithms: tuple[str, ...] = ()
    is_cpu: bool = True  # decides batch sizes and peak estimates in the benchmark
    build_seconds: float = 0.0  # total kernel compile time so far (the benchmark reports deltas)
    # What the benchmark says about this device's code (xdev.bench names no backend): the tuned
    # library its matmul calls (e.g. "cuBLAS"; None: kernels xdev wrote, or NumPy's own matmul),
    # and the conv2d algorithms that call a tuned library rather than xdev's kernels (e.g. "cudnn").
    matmul_library: str | None = None
    library_algorithms: tuple[str, ...] = ()

    @abc.abstractmethod
    def check_dtype(self, dtype: np.dtype) -> None:
        """Raise TypeError naming the device if it cannot compute in ``dtype``."""

    @abc.abstractmethod
    def acc_dtype(self, dtype: np.dtype) -> np.dtype:
        """The dtype reductions accumulate in for inputs of ``dtype``."""

    @abc.abstractmethod
    def upload(self, host: np.ndarray) -> Any:
        """Copy a host array (already of a supported dtype) to the device."""

    @abc.abstractmethod
    def borrow(self, host: np.ndarray) -> Any:
        """Like upload, for an operand only read by one call (may avoid the copy)."""

    @abc.abstractmethod
    def download(self, data: Any) -> np.ndarray:
        """Copy device data to a new host array of the same shape and dtype."""

    @abc.abstractmethod
    def astype(self, data: Any, dtype: np.dtype) -> Any:
        """Convert on the device."""

    @abc.abstractmethod
    def transpose(self, data: Any, axes: tuple[int, ...]) -> Any:
        """A view with permuted axes (no copy)."""

    @abc.abstractmethod
    def getitem(self, data: Any, key: tuple[Any, ...]) -> Any:
        """Basic indexing (ints, slices with steps, Ellipsis, None): a view, no copy."""

    @abc.abstractmethod
    def reshape(self, data: Any, shape: tuple[int, ...]) -> Any:
        """A view with a new shape where strides allow, else a copy (as numpy.reshape)."""

    @abc.abstractmethod
    def matmul(self, a: Any, b: Any) -> Any:
        """numpy.matmul semantics; both operands have the same dtype."""

    @abc.abstractmethod
    def conv2d(self, x: Any, w: Any, bias: Any | None, p: ConvParams, algorithm: str) -> tuple[Any, str]:
        """Cross-correlation with NCHW data; returns (result, algorithm that ran)."""

    def conv2d_backward(
        self, grad_y: Any, x: Any, w: Any, p: ConvParams, needs: frozenset[str], algorithm: str
    ) -> tuple[Any, Any, Any, str]:
        """(grad_x, grad_w, grad_bias, algorithm that ran) of conv2d, None for what ``needs`` omits.

        grad_y is (N, O, Ho, Wo), x 4-D, all three of one dtype; results are in that dtype.
        """
        raise NotImplementedError(f"conv2d_backward is not implemented on {self.key}")

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait until all work queued on this device has finished."""

    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]:
        """Seconds taken by each of ``repeat`` calls of ``fn`` (device work included).

        The default synchronizes around each call and reads the host clock; backends
        with device events (CUDA) override it.
        """
        return host_timed(fn, repeat, self.synchronize)

    peak_method: str = ""  # how peak_gflops() gets its figure, for reports

    def peak_gflops(self, dtype: np.dtype, fresh: bool = False) -> float | None:
        """This device's peak multiply-add rate in GFLOP/s for ``dtype``, or None if unknown.

        The benchmark divides measured GFLOP/s by it; ``peak_method`` says where it comes from.
        ``fresh``: where the figure is measured, measure it again and keep the higher one.
        """
        return None

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A page-locked host array for fast transfers, or None if the backend has none."""
        return None

    # -- DLPack: zero-copy exchange with NumPy, torch, CuPy, JAX (xdev._dlpack drives these) --
    def dlpack_device(self) -> tuple[int, int]:
        """(DLPack device type, device id) of this device's memory."""
        raise BufferError(self._no_dlpack())

    def to_dlpack(self, data: Any, *, stream: Any, max_version: tuple[int, int] | None, copy: bool | None) -> Any:
        """A DLPack capsule of ``data`` (of a copy when ``copy``), ordered after the work queued
        so far as the consumer's ``stream`` requires."""
        raise BufferError(self._no_dlpack())

    def wrap_dlpack(self, obj: Any, src: tuple[int, int], copy: bool | None) -> Any | None:
        """Native data for the DLPack producer ``obj`` living on ``src``: its own memory (a copy
        when ``copy``) if that is this device's memory, else None (the caller decides about copies)."""
        return None

    def cuda_array_interface(self, data: Any) -> dict[str, Any]:
        """``__cuda_array_interface__`` of ``data``; AttributeError where memory is not CUDA's."""
        raise AttributeError(f"__cuda_array_interface__: {self.key} memory is not CUDA memory")

    def _no_dlpack(self) -> str:
        return (f"{self.key} ({self.name}) memory cannot be exported through DLPack: no DLPack "
                f"consumer reads {self.backend} buffers; download with a.numpy() (a NumPy array) or "
                f"move with a.to('numpy') / a.to('cuda') first")

    def download_into(self, data: Any, out: np.ndarray) -> None:
        """Copy device data into ``out`` (same shape and dtype; e.g. a pinned_empty array)."""
        np.copyto(out, self.download(data))

    def stager(self, slots: int) -> Any | None:
        """The uploader xdev.prefetch's background thread uses (protocol in xdev/_prefetch.py),
        with ``slots`` reusable staging buffers; None: a plain upload in that thread."""
        return None

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        """The arithmetic matmul runs in for ``dtype`` when it is not the dtype's own, as the
        benchmark records it: ``{"numeric_mode": "tf32" | "fp16" | "strict-fp32" | ...}``; {}: plain."""
        return {}

    def conv_numerics(self, algorithm: str, dtype: np.dtype) -> dict[str, Any]:
        """As matmul_numerics, for the conv2d ``algorithm`` that just ran (may add ``numerics``, a
        one-line description, and other fields the benchmark's rows carry)."""
        return {}

    def unavailable_reason(self, algorithm: str) -> str | None:
        """Why a conv2d algorithm known to this backend cannot run here (e.g. a missing extra)."""
        return None

    def info(self) -> dict[str, Any]:
        """Machine-readable description (name, driver, library versions) for info and bench."""
        return {"backend": self.backend, "device": self.key, "name": self.name}

    def __repr__(self) -> str:
        return f"<xdev device {self.key}: {self.name}>"

    # A device is a process's handle on hardware: a copy is the same device, and an unpickled
    # one is the receiving process's own device of that name (the registry's, so identity
    # still means "same device" and arrays combine).
    def __reduce__(self) -> tuple[Callable[[str], Device], tuple[str]]:
        return (device_by_key, (self.key,))

    def __copy__(self) -> Device:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Device:
        return self
