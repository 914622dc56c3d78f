"""The OpenCL backend: any OpenCL device through PyOpenCL (PoCL for CPUs is the default extra)."""
from . import autotune, params
from .device import OpenCLDevice, open_device, probe

# autotune and params serve `python -m xdev.tune`, which reaches them through the registry.
__all__ = ["OpenCLDevice", "autotune", "open_device", "params", "probe"]
