"""The OpenCL backend: any OpenCL device through PyOpenCL (PoCL for CPUs is the default extra)."""
from .device import OpenCLDevice, open_device, probe

__all__ = ["OpenCLDevice", "open_device", "probe"]
