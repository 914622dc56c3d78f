"""A stand-in for CuPy with one fake GPU whose memory is host memory: enough for the cuda
backend to open a device, upload, download and synchronize without CUDA.

``install()`` puts it in ``sys.modules`` (before xdev loads its cuda backend); run it in a
child process (tests/child.py), where it cannot leak into other tests. ``driver_calls``
counts the calls that would reach the CUDA driver.
"""
from __future__ import annotations

import sys
import types

import numpy as np

driver_calls = 0


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int) -> None:
        super().__init__(f"cudaError {status}")
        self.status = status


class OutOfMemoryError(MemoryError):
    pass


class FakeArray(np.ndarray):
    """A cupy.ndarray look-alike in host memory."""

    def set(self, host: np.ndarray) -> None:
        self[...] = host


def _driver() -> None:
    global driver_calls
    driver_calls += 1


class _Device:
    def __init__(self, index: int) -> None:
        self.index = index

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def synchronize(self) -> None:
        _driver()


def _device_count() -> int:
    _driver()
    return 1


def _properties(index: int) -> dict:
    _driver()
    return {"name": b"Fake GPU", "major": 9, "minor": 0, "multiProcessorCount": 1, "totalGlobalMem": 1 << 30}


def _empty(shape, dtype) -> FakeArray:
    _driver()
    return np.empty(shape, dtype).view(FakeArray)


def _array(host, copy: bool = True) -> FakeArray:
    _driver()
    return np.array(host, copy=True).view(FakeArray)


def _asnumpy(a) -> np.ndarray:
    _driver()
    return np.array(a, copy=True)


def install() -> types.ModuleType:
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "0.0+fake"
    cupy.ndarray = FakeArray
    cupy.cuda = types.SimpleNamespace(
        Device=_Device,
        runtime=types.SimpleNamespace(
            getDeviceCount=_device_count, getDeviceProperties=_properties, CUDARuntimeError=CUDARuntimeError,
            runtimeGetVersion=lambda: 12090, driverGetVersion=lambda: 12090,
        ),
        memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
    )
    cupy.empty = _empty
    cupy.array = _array
    cupy.asnumpy = _asnumpy
    cupy.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(FakeArray)
    sys.modules["cupy"] = cupy
    sys.modules["cupyx"] = types.ModuleType("cupyx")
    sys.modules["cudnn"] = None  # the cuDNN frontend: absent
    return cupy
