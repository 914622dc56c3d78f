"""The NumPy backend: the CPU reference, with BLAS doing the heavy lifting."""
from __future__ import annotations

from .device import NumpyDevice, probe

__all__ = ["NumpyDevice", "open_device", "probe"]


def open_device(selector: str | None) -> NumpyDevice:
    from .device import open_device as _open

    return _open(selector)
