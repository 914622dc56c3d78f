"""What the modules below device.py use of an OpenCL device, as protocols.

The floor plan: device.py (OpenCLDevice) on top, discovery.py (the devices found, the
selector, the proof's verdict) below it; the kernel modules (gemm.py, conv.py, backward.py,
staging.py, clblast.py) below device.py, handed the device as an argument; the helpers
(array.py, kernels.py, params.py, proof.py, this module) at the bottom. The
kernel modules and params.py name the device by these protocols rather than importing
OpenCLDevice, so no module imports one above it.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyopencl as cl

from .array import CLArray


class DeviceDescription(Protocol):
    """A device as params.py reads it: an OpenCLDevice, or discovery.py's description of one
    that is not open yet (the proof chooses parameters before the device is opened)."""

    cand: Any  # discovery.Candidate: platform, device and their indexes
    cl_device: cl.Device
    is_cpu: bool
    target: Any  # isa.Target: what a CPU device's compiler emits (None on GPUs)
    _vector_width: int | None  # the vector width the proof settled on (None: not proven yet)


class KernelDevice(DeviceDescription, Protocol):
    """An open device as the kernel modules use it (OpenCLDevice implements it)."""

    key: str
    name: str
    family: str  # "cpu" or "gpu": which kernel family runs
    params: dict[str, Any]  # kernel parameters (params.params_for)
    ctx: cl.Context
    queue: cl.CommandQueue
    max_alloc: int
    conv_offsets: dict[tuple, CLArray]  # conv.tap_offsets' tables, living with the device
    tc_reason: str | None  # None where the tensor-core GEMM runs (tc.py), else why not
    force_tf32: bool | None  # the float32 mode of the tensor-core GEMM, None: the user's switch

    def kernel(self, file: str, name: str, options: dict[str, int]) -> cl.Kernel: ...

    def disable_tc(self, reason: str) -> None: ...

    def alloc(self, nbytes: int) -> Any: ...

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> CLArray: ...

    def upload(self, host: np.ndarray) -> CLArray: ...

    def astype(self, a: CLArray, dtype: np.dtype) -> CLArray: ...

    def reshape(self, a: CLArray, shape: tuple[int, ...]) -> CLArray: ...

    def fill(self, out: CLArray, value: float) -> None: ...

    def matmul(self, a: CLArray, b: CLArray) -> CLArray: ...

    def launch(self, file: str, name: str, options: dict[str, int], global_size: tuple[int, ...],
               local_size: tuple[int, ...] | None, *args: Any) -> cl.Event: ...
