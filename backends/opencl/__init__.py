"""The OpenCL backend: any OpenCL device through PyOpenCL (PoCL for CPUs is the default extra)."""
import os

# PoCL's worker threads, left unpinned, were seen sharing one core for whole kernels
# (GEMM throughput halving at random on a 2-core VM); pinning them keeps timings steady.
# Read by PoCL when it starts, so it must be set before pyopencl is first used.
os.environ.setdefault("POCL_AFFINITY", "1")

from .device import OpenCLDevice, open_device, probe  # noqa: E402

__all__ = ["OpenCLDevice", "open_device", "probe"]
