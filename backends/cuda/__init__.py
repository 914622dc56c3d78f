"""The cuda backend: NVIDIA GPUs through CuPy (cuBLAS matmul; conv2d through cuDNN, im2col + cuBLAS
or a direct CUDA kernel). Install with ``pip install "xdev[cuda]"`` (and ``"xdev[cuda,cudnn]"``
for cuDNN); see docs/cuda.md.

CuPy is imported here, at the package's first use: xdev imports this package only when the
cuda backend is asked for, and the registry turns a missing CuPy into that install hint.
"""
from .device import CudaDevice, open_device, probe

__all__ = ["CudaDevice", "open_device", "probe"]
