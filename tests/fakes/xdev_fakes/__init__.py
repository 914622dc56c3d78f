"""Fake backends for tests (see ../sitecustomize.py): NumPy underneath, registered by name."""
from __future__ import annotations

from typing import Any, Callable

# fake -> (the backend name it registers, its module, the registry entry's pip extra and packages)
FAKES = {
    "toy": ("toy", "xdev_fakes.toy", None, ()),
    "cuda": ("cuda", "xdev_fakes.gpu", None, ()),
    # the real opencl backend with a fake GPU in front (its default device), as on a GPU machine
    "opencl-gpu": ("opencl", "xdev_fakes.opencl_gpu", "opencl", ("pyopencl",)),
}


def install(names: str) -> None:
    """Register each comma-separated fake: the one edit to xdev/_registry.py a new backend makes
    (a ``_BACKENDS`` entry: module, pip extra, third-party packages), done at run time."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in FAKES]
    if unknown:
        raise ValueError(f"XDEV_TEST_FAKES: unknown fake(s) {unknown}; choose from {', '.join(FAKES)}")
    if not wanted:
        return
    from xdev import _registry

    for fake in wanted:
        name, module, extra, packages = FAKES[fake]
        _registry._BACKENDS[name] = (module, extra, packages)
    _registry.BACKEND_NAMES = tuple(_registry._BACKENDS)


def one_device(dev: Any, reason: str) -> tuple[Callable[[], Any], Callable[[str | None], Any]]:
    """probe() and open_device(selector) of a backend whose only device is ``dev``."""
    from xdev.contract import BackendStatus

    def probe() -> BackendStatus:
        return BackendStatus(True, reason, (dev.key,))

    def open_device(selector: str | None) -> Any:
        if selector not in (None, "", "0"):
            raise ValueError(f"the {dev.backend} backend has one device, {dev.key!r}; received selector {selector!r}")
        return dev
    return probe, open_device
