"""A fake CUDA GPU, NumPy underneath: a non-CPU device with a tuned matmul library and a library
conv algorithm, as the cuda backend's device describes itself, so tests of the tools meet what
a machine with a GPU gives them (claims 1-3 measured, GPU batch sizes, torch beside cuda:0)."""
from __future__ import annotations

from typing import Any

import numpy as np

from xdev.backends.numpy.device import NumpyDevice
from xdev.contract import ConvParams, env
from xdev.contract.device import DL_CUDA

from . import one_device


class FakeGpuDevice(NumpyDevice):
    backend = "cuda"
    key = "cuda:0"
    is_cpu = False
    index = 0
    conv_algorithms = ("cudnn", "gemm", "direct")
    matmul_library = "cuBLAS"
    library_algorithms = ("cudnn",)

    def __init__(self) -> None:
        self.name = "Fake GPU (NumPy underneath)"

    def conv2d(self, x: Any, w: Any, bias: Any | None, p: ConvParams, algorithm: str) -> tuple[Any, str]:
        y, _ = super().conv2d(x, w, bias, p, "gemm")
        return y, "cudnn" if algorithm == "auto" else algorithm

    def dlpack_device(self) -> tuple[int, int]:
        return (DL_CUDA, 0)

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        """As cuBLAS reports its compute type: TF32 when asked for, float16 on tensor cores."""
        dtype = np.dtype(dtype)
        if dtype == np.float16:
            return {"numeric_mode": "fp16"}
        return {"numeric_mode": "tf32" if dtype == np.float32 and env.cuda_tf32() else "strict-fp32"}


probe, open_device = one_device(FakeGpuDevice(), "a fake GPU for tests, NumPy underneath")
