"""The OpenCL backend: any OpenCL device through PyOpenCL (PoCL for CPUs is the default extra)."""
from . import autotune, discovery, params
from .device import OpenCLDevice, open_device
from .discovery import probe

# autotune, params and discovery (reset_tuning) serve `python -m xdev.tune`, which reaches them
# through the registry.
__all__ = ["OpenCLDevice", "autotune", "discovery", "open_device", "params", "probe"]
