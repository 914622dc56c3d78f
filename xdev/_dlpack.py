"""``xdev.from_dlpack``: any DLPack producer as an xdev.Array (the producer side is
``Array.__dlpack__``).

The per-backend parts (which memory a backend can read or export, streams) live behind the
device interface: ``Device.dlpack_device / to_dlpack / wrap_dlpack / cuda_array_interface``.
This module holds the consumer's rules every backend shares: where the result lives, when a
copy is allowed, and the messages.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._array import Array
from ._config import _context
from ._registry import get_device
from .contract import DTYPES_TEXT, Device
from .contract.device import DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED, DL_ROCM_HOST

_HOST = (DL_CPU, DL_CUDA_HOST, DL_ROCM_HOST, DL_CUDA_MANAGED)
_NAMES = {1: "CPU", 2: "CUDA", 3: "CUDA pinned host", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI",
          10: "ROCm", 11: "ROCm pinned host", 12: "ext_dev", 13: "CUDA managed", 14: "oneAPI",
          15: "WebGPU", 16: "Hexagon", 17: "MAIA"}


def _where(dl: tuple[int, int]) -> str:
    return f"{_NAMES.get(dl[0], f'device type {dl[0]}')} device {dl[1]}"


def _native_spec(src: tuple[int, int]) -> str:
    """The backend that holds DLPack memory of device ``src`` without a copy."""
    if src[0] in _HOST:
        return "numpy"
    if src[0] == DL_CUDA:
        return f"cuda:{src[1]}"
    raise BufferError(
        f"xdev.from_dlpack: xdev has no backend that reads {_where(src)} memory; copy it to the host "
        f"with its own library first, or pass backend='numpy' (or another) with copy=True"
    )


def _host_copy(obj: Any, src: tuple[int, int]) -> np.ndarray:
    """A host array holding the producer's data (for an explicit copy=True across devices)."""
    if src[0] in _HOST:
        return np.from_dlpack(obj)  # a view: the upload that follows makes the copy
    try:  # DLPack 1.0: the producer copies to the host itself (dl_device=(CPU, 0), copy=True)
        return np.from_dlpack(obj, device="cpu", copy=True)
    except (BufferError, TypeError, ValueError, RuntimeError, NotImplementedError):
        pass
    if src[0] in (DL_CUDA, DL_CUDA_MANAGED):
        return get_device(f"cuda:{src[1]}").download(_wrap(get_device(f"cuda:{src[1]}"), obj, src, False))
    raise BufferError(f"xdev.from_dlpack: the producer on {_where(src)} cannot copy its data to the host; "
                      f"copy it with its own library first")


def _wrap(dev: Device, obj: Any, src: tuple[int, int], copy: bool | None) -> Any:
    data = dev.wrap_dlpack(obj, src, copy)
    if data is None:
        raise BufferError(f"{dev.key} cannot read {_where(src)} memory in place")
    return data


def from_dlpack(obj: Any, backend: str | None = None, copy: bool | None = None) -> Array:
    """Wrap any DLPack producer (NumPy, torch, CuPy, JAX, xdev) as an xdev.Array.

    Without ``backend`` (and outside ``use_backend``) the array stays where it is: host memory
    becomes a ``numpy`` array, CUDA memory a ``cuda:N`` array; the result shares the
    producer's memory (a write through one is seen by the other). When the target device is
    another one, it is an error unless ``copy=True``; ``copy=False`` forbids any copy.
    """
    if copy not in (None, True, False):
        raise TypeError(f"xdev.from_dlpack: copy is None, True or False; received {copy!r}")
    spec = backend if backend is not None else _context.get()
    if isinstance(obj, Array):
        dev = obj._dev if spec is None else get_device(spec)
        if dev is obj._dev:
            return Array._wrap(dev.astype(obj._data, obj.dtype), dev) if copy else obj
        if copy is not True:
            raise BufferError(_elsewhere(obj.device, dev, copy))
        return obj.to(dev.key)
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise TypeError(
            f"xdev.from_dlpack expects an object with __dlpack__ and __dlpack_device__ (a NumPy, torch, "
            f"CuPy or JAX array); received {type(obj).__name__}; for other data use xdev.asarray(obj)"
        )
    src = _device_pair(obj)
    obj = _resolved(obj, copy)
    dev = get_device(spec if spec is not None else _native_spec(src))
    with _reading(obj):
        data = dev.wrap_dlpack(obj, src, copy)
    if data is None:
        if copy is not True:
            raise BufferError(_elsewhere(_where(src), dev, copy))
        with _reading(obj):
            host = _host_copy(obj, src)
        _check_dtype(dev, host.dtype)
        return Array._wrap(dev.upload(host), dev)
    _check_dtype(dev, data.dtype)
    return Array._wrap(data, dev)


def _device_pair(obj: Any) -> tuple[int, int]:
    """``obj.__dlpack_device__()`` as (device type, device id), or a ValueError naming what it returned."""
    dl = obj.__dlpack_device__()
    try:
        kind, index = dl
        return int(kind), int(index)
    except (TypeError, ValueError):
        raise ValueError(
            f"xdev.from_dlpack: {type(obj).__name__}.__dlpack_device__() returned {dl!r}; DLPack "
            f"producers return a pair of ints (device type, device id), e.g. (1, 0) for the CPU: "
            f"this object is not a valid DLPack producer"
        ) from None


# torch's lazy bits (a view that negates or conjugates on read, e.g. t.conj().imag) that DLPack
# cannot carry: the memory holds the values before the operation.
_LAZY_BITS = (("is_neg", "resolve_neg", "negative"), ("is_conj", "resolve_conj", "conjugate"))


def _resolved(obj: Any, copy: bool | None) -> Any:
    """``obj`` with torch's negative and conjugate bits applied (a copy, so only with copy=True);
    a BufferError when a bit is set without copy=True: its memory has the wrong values."""
    for test, resolve, bit in _LAZY_BITS:
        is_set = getattr(obj, test, None)
        if not (callable(is_set) and is_set() is True):
            continue
        if copy is not True:
            raise BufferError(
                f"xdev.from_dlpack: this {type(obj).__name__} has its {bit} bit set (a lazy "
                f"{'negation' if bit == 'negative' else 'conjugation'}, e.g. the .imag of a conjugated "
                f"torch tensor): its memory holds the values before that operation and DLPack cannot "
                f"say so, so sharing it would give wrong values; pass copy=True (xdev copies "
                f"t.{resolve}()), or call t.{resolve}() first"
            )
        obj = getattr(obj, resolve)()
    return obj


@contextlib.contextmanager
def _reading(obj: Any) -> Iterator[None]:
    """A consumer's 'unsupported dtype' (NumPy: 'Unsupported dtype in DLTensor') as a TypeError
    that names the producer's dtype and how to convert it."""
    try:
        yield
    except (RuntimeError, TypeError, ValueError, BufferError) as e:
        if "dtype" not in str(e).lower():
            raise
        dtype = getattr(obj, "dtype", "unknown")
        hint = "e.g. t.float() in torch"
        if "bfloat16" in str(dtype).lower():
            hint = ("bfloat16 has no NumPy dtype; t.float() converts it to float32 exactly (t.half() "
                    "to float16 may overflow: bfloat16 has float32's range)")
        raise TypeError(
            f"xdev.from_dlpack: the producer's dtype {dtype} cannot be read ({e}); xdev computes in "
            f"{DTYPES_TEXT}: convert it first ({hint})"
        ) from e


def _check_dtype(dev: Device, dtype: Any) -> None:
    try:
        dev.check_dtype(np.dtype(dtype))
    except TypeError as e:
        raise TypeError(f"xdev.from_dlpack: {e}; convert it first (e.g. t.float() in torch)") from None


def _elsewhere(where: str, dev: Device, copy: bool | None) -> str:
    if copy is False:
        return (f"xdev.from_dlpack: the data lives on {where}, not on {dev.key}, and copy=False forbids "
                f"the copy that moving it takes")
    return (f"xdev.from_dlpack: the data lives on {where}, not on {dev.key}; from_dlpack shares memory "
            f"and never moves data silently: wrap it where it is (omit backend=) and move it with "
            f".to({dev.key!r}), or pass copy=True")
