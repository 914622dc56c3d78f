"""A toy backend "toy": xdev's NumPy device under another name, a CPU device running what the
benchmark counts as its own kernels. It is what a new backend's package provides: probe(),
open_device(selector) and a Device subclass."""
from __future__ import annotations

from xdev.backends.numpy.device import NumpyDevice

from . import one_device


class ToyDevice(NumpyDevice):
    backend = "toy"
    key = "toy"

    def __init__(self) -> None:
        self.name = "Toy device (NumPy underneath)"


probe, open_device = one_device(ToyDevice(), "a test backend, NumPy underneath")
