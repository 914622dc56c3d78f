"""The opencl backend as on a machine with an OpenCL GPU: a fake GPU (NumPy underneath) in front of
this machine's real OpenCL devices, so ``opencl`` named without a device selects the GPU (the real
backend's rule: GPUs first), and the CPU devices keep their keys and their real kernels.

On the H200 machine ``--backends numpy,opencl`` measured NVIDIA's OpenCL GPU (opencl:0:0) beside a
PoCL CPU (opencl:1:0): a tool test that took ``opencl`` for a CPU failed there first. Here the fake
GPU is ``opencl:9:0``, a platform index no real device takes on these machines.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from xdev.backends.numpy.device import NumpyDevice
from xdev.contract import BackendStatus, env

_real = importlib.import_module("xdev.backends.opencl")  # a missing pyopencl: the backend is unavailable

GPU_KEY, GPU_SELECTORS = "opencl:9:0", ("9:0", "9")


class FakeOpenCLGpu(NumpyDevice):
    """What the benchmark reads of an OpenCL GPU: not a CPU, xdev's own kernels (no library),
    and the numerics the real OpenCL device reports: on FMA units, or with
    ``XDEV_TEST_FAKE_OPENCL_TC=1`` TF32/float16 on tensor cores (the tc family on NVIDIA)."""

    backend = "opencl"
    key = GPU_KEY
    is_cpu = False
    index = 0

    def __init__(self) -> None:
        self.name = "Fake OpenCL GPU (NumPy underneath)"
        self.tensor_cores = os.environ.get("XDEV_TEST_FAKE_OPENCL_TC") == "1"

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        dtype = np.dtype(dtype)
        if self.tensor_cores and (dtype == np.float16 or (dtype == np.float32 and env.opencl_tf32())):
            mode = "fp16" if dtype == np.float16 else "tf32"
            return {"numeric_mode": mode, "numerics": f"{mode}, tensor cores (fake)"}
        mode = {np.dtype(np.float16): "fp16-storage-fp32-compute", np.dtype(np.float64): "fp64"}.get(
            dtype, "strict-fp32")
        return {"numeric_mode": mode, "numerics": f"{mode}, FMA units"}

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.key, "name": self.name, "tensor_cores": self.tensor_cores,
                "tensor_core_reason": "" if self.tensor_cores else "a fake GPU without tensor cores"}

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A GPU's host memory for fast transfers (plain memory here): its upload rows exist."""
        return np.empty(shape, dtype)


_GPU = FakeOpenCLGpu()


def probe() -> BackendStatus:
    real = _real.probe()
    reason = f"{GPU_KEY}: a fake GPU for tests, NumPy underneath" + (f"; {real.reason}" if real.available else "")
    return BackendStatus(True, reason, (GPU_KEY, *(real.devices if real.available else ())))


def open_device(selector: str | None) -> Any:
    if selector is None and env.pyopencl_ctx():
        selector = env.pyopencl_ctx()
    if selector is None or selector.strip() in ("", *GPU_SELECTORS):
        return _GPU
    return _real.open_device(selector)


def __getattr__(name: str) -> Any:
    """Everything else (autotune, params for ``python -m xdev.tune``) is the real backend's."""
    return getattr(_real, name)
