"""The opencl backend (in progress)."""
from ..base import BackendStatus, BackendUnavailable


def probe() -> BackendStatus:
    return BackendStatus(False, "the opencl backend is not built yet", ())


def open_device(selector):
    raise BackendUnavailable("the opencl backend is not built yet")
