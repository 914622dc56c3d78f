"""The NumPy backend: the CPU reference, with BLAS doing the heavy lifting."""
from __future__ import annotations

from .device import NumpyDevice, open_device, probe

__all__ = ["NumpyDevice", "open_device", "probe"]
