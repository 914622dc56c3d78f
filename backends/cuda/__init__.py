"""The cuda backend (in progress)."""
from ..base import BackendStatus, BackendUnavailable


def probe() -> BackendStatus:
    return BackendStatus(False, "the cuda backend is not built yet", ())


def open_device(selector):
    raise BackendUnavailable("the cuda backend is not built yet")
