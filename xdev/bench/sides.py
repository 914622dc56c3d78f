"""The sides the benchmark times against each other: xdev devices, and yardsticks beside them.

A :class:`Side` is everything the measuring loop needs from one column of the tables:
timing (``elapsed``, ``synchronize``, ``build_seconds``), how to set up a matmul or a
conv2d from host arrays, and what to call its rows. :class:`DeviceSide` wraps an xdev
``Device`` and calls the public API (``xdev.matmul``, ``xdev.conv2d``: what a user's
program pays); a yardstick (``--reference torch``, xdev.bench.reference) implements the
same few methods for another library. Nothing in the benchmark asks which backend a side
is: what differs between backends is a property of their Device (``is_cpu``,
``matmul_library``, ``library_algorithms``, ``conv_numerics`` ...).
"""
from __future__ import annotations

import abc
import time
from typing import Any, Callable

import numpy as np

import xdev
from xdev.contract.device import Device

# (algorithm that ran, the call to time, build seconds of its first call, seconds of its first call)
ConvCall = tuple[str, Callable[[], Any], float, float]

# Every "vs NumPy" ratio is against xdev's NumPy backend: the one every install has.
BASELINE = "numpy"


class Side(abc.ABC):
    """One column of the benchmark."""

    key: str  # "numpy", "opencl:0:0", "torch:cpu"
    name: str  # the device's (or library's) own name
    backend: str  # the rows' "backend" field
    is_cpu: bool
    reference: bool = False  # a yardstick beside xdev, not xdev
    device: Device | None = None  # the xdev device; workloads that measure xdev itself need one
    conv_algorithms: tuple[str, ...] = ()
    # CPU sides: the instruction set their code runs in ("AVX2", "AVX-512", ...; None: unknown)
    # and where that comes from (OpenBLAS's kernel set, PoCL's target CPU, torch's capability).
    isa: str | None = None
    isa_source: str | None = None

    @property
    def build_seconds(self) -> float:
        return 0.0

    @abc.abstractmethod
    def synchronize(self) -> None: ...

    @abc.abstractmethod
    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]: ...

    @abc.abstractmethod
    def matmul_fn(self, ha: np.ndarray, hb: np.ndarray) -> Callable[[], Any]:
        """The call to time: a @ b on this side, operands already in place."""

    @abc.abstractmethod
    def conv_calls(self, hx: np.ndarray, hw: np.ndarray, hb: np.ndarray, algorithms: list[str]) -> list[ConvCall]:
        """conv2d(x, w, b, padding=1) per algorithm, each called once (building its kernels)."""

    @property
    def matmul_label(self) -> str:
        """The matmul rows' "algorithm"."""
        return self.backend

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        return {}

    def conv_numerics(self, algorithm: str, dtype: np.dtype) -> dict[str, Any]:
        return {}

    def info(self) -> dict[str, Any]:
        """The JSON machine block's entry: the device's own info() plus what the verdicts read."""
        return {"backend": self.backend, "device": self.key, "name": self.name}

    def __repr__(self) -> str:
        return f"<bench side {self.key}>"


class DeviceSide(Side):
    """An xdev device, driven through xdev's public API."""

    def __init__(self, dev: Device) -> None:
        self.device = dev
        self.key, self.name, self.backend, self.is_cpu = dev.key, dev.name, dev.backend, dev.is_cpu
        self.conv_algorithms = tuple(dev.conv_algorithms)
        self.isa, self.isa_source = isa_of(dev)

    @property
    def build_seconds(self) -> float:
        return self.device.build_seconds

    def synchronize(self) -> None:
        self.device.synchronize()

    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]:
        return self.device.elapsed(fn, repeat)

    def matmul_fn(self, ha: np.ndarray, hb: np.ndarray) -> Callable[[], Any]:
        a, b = xdev.asarray(ha, backend=self.key), xdev.asarray(hb, backend=self.key)
        return lambda: xdev.matmul(a, b)

    def conv_calls(self, hx: np.ndarray, hw: np.ndarray, hb: np.ndarray, algorithms: list[str]) -> list[ConvCall]:
        dev = self.device
        x, w, b = (xdev.asarray(h, backend=self.key) for h in (hx, hw, hb))
        out = []
        for algo in algorithms:
            # This first call (it names the algorithm that ran) builds the kernels: its cost
            # goes to build_s / first_call_s, as the timed path would report it.
            b0, t0 = dev.build_seconds, time.perf_counter()
            ran = xdev.conv2d(x, w, b, padding=1, algorithm=algo).algorithm
            dev.synchronize()
            out.append((ran, lambda algo=algo: xdev.conv2d(x, w, b, padding=1, algorithm=algo),
                        dev.build_seconds - b0, time.perf_counter() - t0))
        return out

    @property
    def matmul_label(self) -> str:
        return self.device.matmul_library or self.backend

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        return self.device.matmul_numerics(dtype)

    def conv_numerics(self, algorithm: str, dtype: np.dtype) -> dict[str, Any]:
        return self.device.conv_numerics(algorithm, dtype)

    def info(self) -> dict[str, Any]:
        dev = self.device
        return {**dev.info(), "is_cpu": dev.is_cpu, "matmul_library": dev.matmul_library,
                "library_algorithms": list(dev.library_algorithms)}


_ISA: dict[str, tuple[str | None, str | None]] = {}


def isa_of(dev: Device | Side) -> tuple[str | None, str | None]:
    """(instruction set, where it comes from) of a CPU device's code, from its info()
    ("isa", "isa_source"); (None, None) for GPUs. Asked once per device."""
    if isinstance(dev, Side):
        return dev.isa, dev.isa_source
    if not dev.is_cpu:
        return None, None
    if dev.key not in _ISA:
        info = dev.info()
        _ISA[dev.key] = (info.get("isa"), info.get("isa_source"))
    return _ISA[dev.key]
