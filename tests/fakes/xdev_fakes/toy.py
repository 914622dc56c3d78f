"""A toy backend "toy": xdev's NumPy device under another name, a CPU device running what the
benchmark counts as its own kernels. It is what a new backend's package provides: probe(),
open_device(selector) and a Device subclass."""
from __future__ import annotations

from xdev.backends.numpy.device import NumpyDevice
from xdev.contract import BackendStatus


class ToyDevice(NumpyDevice):
    backend = "toy"
    key = "toy"

    def __init__(self) -> None:
        self.name = "Toy device (NumPy underneath)"


_DEVICE = ToyDevice()


def probe() -> BackendStatus:
    return BackendStatus(True, "a test backend, NumPy underneath", ("toy",))


def open_device(selector: str | None) -> ToyDevice:
    if selector not in (None, "", "0"):
        raise ValueError(f"the toy backend has one device, 'toy'; received selector {selector!r}")
    return _DEVICE
